"""Tether: a runtime access broker for AI agents and other non-human identities.

The task is the unit of authority: an agent proves what it is (SPIFFE), opens a task
for one purpose, and each action is decided at that moment by Cedar policy; credentials
never outlive the task, and every step lands in a hash-chained audit log.
"""

from tether.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TetherError,
    Unauthenticated,
    Unavailable,
)
from tether.model import Decision, Grant, Outcome, Task, TaskState, Workload

__version__ = "0.1.0"

__all__ = [
    "Conflict",
    "Decision",
    "Forbidden",
    "Grant",
    "InvalidRequest",
    "NotFound",
    "Outcome",
    "Task",
    "TaskState",
    "TetherError",
    "Unauthenticated",
    "Unavailable",
    "Workload",
    "__version__",
]

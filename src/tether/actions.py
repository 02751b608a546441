"""The actions the shipped Cedar schema declares, and what kind each one is.

Kinds drive two runtime facts: a ``read`` raises the task's data taint (the highest
sensitivity read so far); ``write``/``send`` are what the taint rule forbids towards
external destinations.
"""

from __future__ import annotations

from typing import Final

TASK_OPEN: Final = "task:open"
TASK_DELEGATE: Final = "task:delegate"
CREDENTIAL_ISSUE: Final = "credential:issue"

READS: Final = frozenset({"read", "list", "http:read"})
WRITES: Final = frozenset({"write", "delete", "http:write"})
SENDS: Final = frozenset({"send"})
CALLS: Final = frozenset({"tool:call"})

LIFECYCLE: Final = frozenset({TASK_OPEN, TASK_DELEGATE})
#: Actions an agent may name in a task scope and in ``authorize``.
SCOPED: Final = READS | WRITES | SENDS | CALLS | {CREDENTIAL_ISSUE}
ALL: Final = SCOPED | LIFECYCLE


def taints(action: str) -> bool:
    """True when an allowed ``action`` hands data to the agent (so the task has read it)."""
    return action in READS or action in CALLS

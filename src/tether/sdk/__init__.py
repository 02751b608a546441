"""The Python SDK: open a task with a ``with`` block, guard tools with one decorator.

    from tether.sdk import Client, guard

    client = Client.local()

    @guard(action="tool:call", resource="crm.lookup")
    def lookup(customer_id: str) -> dict: ...

    with client.task(intent="support.triage", scope=[("tool:call", "crm.lookup")], ttl=300):
        lookup("c-42")          # authorized now, in this task; Denied if policy says no

Framework adapters live in ``tether.sdk.integrations`` and import their framework only
when used, so the SDK itself needs nothing beyond httpx.
"""

from tether.sdk.client import AsyncClient, Client, local_broker
from tether.sdk.errors import ApprovalRequired, ApprovalTimeout, Denied, NoActiveTask
from tether.sdk.guard import GuardSpec, current_decision, guard
from tether.sdk.models import Credential, Decision, Delegation
from tether.sdk.svid import CachedSvid, CallableSvid, FileSvid, StaticSvid, SvidSource, WorkloadApiSvid
from tether.sdk.task import AsyncTask, Task, current_task

__all__ = [
    "ApprovalRequired",
    "ApprovalTimeout",
    "AsyncClient",
    "AsyncTask",
    "CachedSvid",
    "CallableSvid",
    "Client",
    "Credential",
    "Decision",
    "Delegation",
    "Denied",
    "FileSvid",
    "GuardSpec",
    "NoActiveTask",
    "StaticSvid",
    "SvidSource",
    "Task",
    "WorkloadApiSvid",
    "current_decision",
    "current_task",
    "guard",
    "local_broker",
]

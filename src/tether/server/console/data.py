"""What the console's pages show, read from the store (no web framework here).

Each function takes a connection and returns plain records the templates render; the
console's views run them in a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from tether.audit import event as ev
from tether.audit.checkpoint import Checkpoint, stored_checkpoints
from tether.audit.event import Event
from tether.audit.query import EventFilter, search
from tether.audit.trace import Trace, build_trace
from tether.audit.verify import row_to_event
from tether.credentials import leases as ls
from tether.drift import task_drift
from tether.errors import NotFound
from tether.model import Approval, Task, TaskState
from tether.store import repo
from tether.store import tables as t

_E = t.audit_events.c
MAX_ROWS = 200


def tasks(
    conn: Connection, *, agent: str = "", intent: str = "", state: str = "", limit: int = MAX_ROWS
) -> list[Task]:
    q = select(t.tasks).order_by(t.tasks.c.created_at.desc()).limit(limit)
    if state:
        q = q.where(t.tasks.c.state == state)
    if agent:
        q = q.where(t.tasks.c.agent.contains(agent, autoescape=True))
    if intent:
        q = q.where(t.tasks.c.intent == intent)
    return [repo._task(r) for r in conn.execute(q)]


@dataclass
class TaskPage:
    task: Task
    tree: list[Task]  # the whole tree of the task's root, parents first
    leases: list[ls.Lease]
    trace: Trace | None
    drift: dict[str, Any] = field(default_factory=dict)  # tether.drift.task_drift


def task_page(conn: Connection, task_id: str) -> TaskPage:
    task = repo.get_task(conn, task_id)
    if task is None:
        raise NotFound(f"no task `{task_id}`", code="task_not_found")
    tree = repo.subtree(conn, task.root_id)
    try:
        trace: Trace | None = build_trace(conn, task.root_id)
    except NotFound:
        trace = None
    leases = ls.list_leases(conn, task_id=task.id, limit=MAX_ROWS)
    return TaskPage(task, tree, leases, trace, task_drift(conn, task))


@dataclass
class ApprovalView:
    """Everything a human needs to decide one approval."""

    approval: Approval
    task: Task | None
    arguments: Any = None  # as the audit log holds them: masked by the audit rules
    masked: list[str] = field(default_factory=list)
    risk: dict[str, Any] = field(default_factory=dict)
    reasons: list[dict[str, Any]] = field(default_factory=list)
    policy_version: str = ""
    comment: str = ""

    @property
    def delegator(self) -> str:
        d = self.task.delegator if self.task else None
        return f"{d.subject} ({d.issuer})" if d else ""


def _events_by_decision(conn: Connection, decision_ids: Sequence[str]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    if not decision_ids:
        return out
    rows = conn.execute(select(t.audit_events).where(_E.decision_id.in_(list(decision_ids))))
    for r in rows:
        e = row_to_event(r._mapping)
        out.setdefault(e.decision_id or "", []).append(e)
    return out


def approvals(
    conn: Connection, *, state: str = "pending", approval_id: str = "", now: float
) -> list[ApprovalView]:
    """Approvals as a human should see them at ``now``: one past its expiry shows as
    `expired` even before the leader's pass has moved it (``repo.approval_state_is``)."""
    q = select(t.approvals).order_by(t.approvals.c.created_at.desc()).limit(MAX_ROWS)
    if approval_id:
        q = q.where(t.approvals.c.id == approval_id)
    elif state:
        q = q.where(repo.approval_state_is(state, now))
    rows = list(conn.execute(q))
    events = _events_by_decision(conn, [r.decision_id for r in rows if r.decision_id])
    decided = _decision_comments(conn, [r.id for r in rows if r.state in ("granted", "rejected", "consumed")])
    task_ids = list({r.task_id for r in rows})
    by_id = (
        {r.id: repo._task(r) for r in conn.execute(select(t.tasks).where(t.tasks.c.id.in_(task_ids)))}
        if task_ids
        else {}
    )
    out = []
    for r in rows:
        a = repo._approval(r, now)
        view = ApprovalView(a, by_id.get(a.task_id), comment=decided.get(a.id, ""))
        for e in events.get(r.decision_id or "", []):
            if e.type == ev.APPROVAL_REQUESTED:
                view.arguments = e.payload.get("arguments")
                view.masked = [str(m) for m in e.payload.get("_masked", [])]
            elif e.type == ev.DECISION:
                view.risk = dict(e.payload.get("risk") or {})
                view.reasons = list(e.payload.get("reasons") or [])
                view.policy_version = str(e.payload.get("policy_version", ""))
        out.append(view)
    return out


def _decision_comments(conn: Connection, approval_ids: Sequence[str]) -> dict[str, str]:
    if not approval_ids:
        return {}
    flt = EventFilter(types=(ev.APPROVAL_GRANTED, ev.APPROVAL_REJECTED))
    found = {}
    for e in search(conn, flt, limit=1000, newest_first=True):
        aid = e.payload.get("approval_id")
        if aid in approval_ids and aid not in found:
            found[str(aid)] = str(e.payload.get("comment", ""))
    return found


def decisions(conn: Connection, *, outcome: str = "", agent: str = "", limit: int = 100) -> list[Event]:
    flt = EventFilter(types=(ev.DECISION,), outcome=outcome or None, agent=agent or None)
    return search(conn, flt, limit=limit, newest_first=True)


def audit_search(conn: Connection, flt: EventFilter, limit: int = 100) -> list[Event]:
    return search(conn, flt, limit=limit, newest_first=True)


def latest_checkpoints(conn: Connection) -> list[Checkpoint]:
    latest: dict[str, Checkpoint] = {}
    for cp in stored_checkpoints(conn):
        if cp.chain not in latest or cp.seq > latest[cp.chain].seq:
            latest[cp.chain] = cp
    return sorted(latest.values(), key=lambda c: c.chain)


def policy_events(conn: Connection, limit: int = 50) -> list[Event]:
    flt = EventFilter(types=(ev.POLICY_LOADED, ev.POLICY_RELOAD_FAILED))
    return search(conn, flt, limit=limit, newest_first=True)


@dataclass
class KillPlan:
    """What a kill switch would end: the active tasks (with descendants) and their live leases."""

    what: str  # "task", "agent" or "everything"
    target: str
    tasks: list[Task]
    leases: list[ls.Lease]


def kill_plan(conn: Connection, what: str, target: str) -> KillPlan:
    if what == "task":
        root = repo.get_task(conn, target)
        if root is None:
            raise NotFound(f"no task `{target}`", code="task_not_found")
        roots = [root]
    elif what == "agent":
        roots = repo.active_tasks_of_agent(conn, target)
    else:
        roots = repo.all_active_tasks(conn)
    seen: dict[str, Task] = {}
    for r in roots:
        for task in repo.subtree(conn, r.id):
            if task.state is TaskState.ACTIVE:
                seen.setdefault(task.id, task)
    ids = list(seen)
    return KillPlan(what, target, list(seen.values()), ls.live_leases_of_tasks(conn, ids))


def unrevoked(conn: Connection, lease_ids: Sequence[str]) -> int:
    """How many of these leases are not yet revoked (pending, active or revoking)."""
    if not lease_ids:
        return 0
    done = (ls.LeaseState.REVOKED.value, ls.LeaseState.IRREVOCABLE.value)
    count = 0
    for lid in lease_ids:
        lease = ls.get_lease(conn, lid)
        if lease is not None and lease.state.value not in done:
            count += 1
    return count

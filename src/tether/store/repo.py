"""Row ↔ record mapping for the core tables. Functions take the caller's connection so
the broker decides the transaction boundary (state change and audit event commit
together)."""

from __future__ import annotations

import json
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, and_, bindparam, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tether.model import (
    Approval,
    ApprovalState,
    Delegation,
    Delegator,
    Grant,
    Task,
    TaskState,
)
from tether.store import raw
from tether.store import tables as t


def scope_to_json(scope: Iterable[Grant]) -> str:
    return json.dumps([g.to_dict() for g in scope], separators=(",", ":"))


def scope_from_json(text: str) -> tuple[Grant, ...]:
    return tuple(Grant(d["action"], d["resource"]) for d in json.loads(text))


# -- tasks ---------------------------------------------------------------------------


def _task(row: Row[Any]) -> Task:
    return _task_from(row._mapping)  # type: ignore[arg-type]


def _task_from(m: Mapping[str, Any]) -> Task:
    delegator = Delegator(m["delegator_sub"], m["delegator_iss"]) if m["delegator_sub"] else None
    return Task(
        id=m["id"],
        agent=m["agent"],
        delegator=delegator,
        intent=m["intent"],
        description=m["description"],
        scope=scope_from_json(m["scope"]),
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        parent_id=m["parent_id"],
        root_id=m["root_id"],
        depth=m["depth"],
        state=TaskState(m["state"]),
        act_chain=tuple(json.loads(m["act_chain"])),
        cnf_jkt=m["cnf_jkt"],
        closed_at=m["closed_at"],
        attestation=m["attestation"],
        agent_attrs=json.loads(m["agent_attrs"]),
    )


def insert_task(conn: Connection, task: Task) -> None:
    conn.execute(
        insert(t.tasks).values(
            id=task.id,
            agent=task.agent,
            attestation=task.attestation,
            agent_attrs=json.dumps(dict(task.agent_attrs), sort_keys=True),
            delegator_sub=task.delegator.subject if task.delegator else None,
            delegator_iss=task.delegator.issuer if task.delegator else None,
            intent=task.intent,
            description=task.description,
            scope=scope_to_json(task.scope),
            created_at=task.created_at,
            expires_at=task.expires_at,
            parent_id=task.parent_id,
            root_id=task.root_id,
            depth=task.depth,
            state=task.state.value,
            act_chain=json.dumps(list(task.act_chain)),
            cnf_jkt=task.cnf_jkt,
            closed_at=None,
            max_sensitivity_read=-1,
        )
    )


# Hot-path statements are built once with bound parameters: constructing a statement
# and its cache key per call costs more than SQLite takes to run it.
_GET_TASK = select(t.tasks).where(t.tasks.c.id == bindparam("id"))


def get_task(conn: Connection, task_id: str) -> Task | None:
    row = conn.execute(_GET_TASK, {"id": task_id}).first()
    return _task(row) if row else None


_GET_TASK_RAW = raw.statement("SELECT * FROM tasks WHERE id = :id")
# What changes after a task opens: its state (closed, expired, revoked), when it ended, and
# the taint. Read from the row on every decision, inside the decision's transaction.
_TASK_LIVE_RAW = raw.statement("SELECT state, closed_at, max_sensitivity_read FROM tasks WHERE id = :id")

#: The fields a task never changes after it opens (id, agent, scope, expiry, lineage, …),
#: parsed once per task per engine. Only these are cached: whether the task is still
#: active is read from the store on every call, so no cache can serve a closed task.
_FIXED_CACHE_SIZE = 10_000
_fixed: weakref.WeakKeyDictionary[Engine, OrderedDict[str, Task]] = weakref.WeakKeyDictionary()
_fixed_lock = threading.Lock()


def get_task_and_taint(conn: Connection, task_id: str) -> tuple[Task, int] | None:
    """The task and the highest sensitivity its tree has read (-1: nothing yet).

    On every decision's path: raw driver statements (see ``tether.store.raw``), and a
    narrow one (state, end, taint) when the task's fixed fields are already parsed."""
    with _fixed_lock:
        cache = _fixed.setdefault(conn.engine, OrderedDict())
        fixed = cache.get(task_id)
    if fixed is not None:
        live = raw.first(conn, _TASK_LIVE_RAW, {"id": task_id})
        if live is None:  # the row is gone: forget it and say so, as for an unknown task
            with _fixed_lock:
                cache.pop(task_id, None)
            return None
        task = replace(fixed, state=TaskState(live["state"]), closed_at=live["closed_at"])
        return task, int(live["max_sensitivity_read"])
    m = raw.first(conn, _GET_TASK_RAW, {"id": task_id})
    if m is None:
        return None
    task = _task_from(m)
    with _fixed_lock:
        cache[task_id] = task
        while len(cache) > _FIXED_CACHE_SIZE:
            cache.popitem(last=False)
    return task, int(m["max_sensitivity_read"])


def list_tasks(
    conn: Connection, *, state: str | None = None, agent: str | None = None, limit: int = 200
) -> list[Task]:
    q = select(t.tasks).order_by(t.tasks.c.created_at.desc()).limit(limit)
    if state:
        q = q.where(t.tasks.c.state == state)
    if agent:
        q = q.where(t.tasks.c.agent == agent)
    return [_task(r) for r in conn.execute(q)]


def children(conn: Connection, task_id: str) -> list[Task]:
    rows = conn.execute(select(t.tasks).where(t.tasks.c.parent_id == task_id).order_by(t.tasks.c.created_at))
    return [_task(r) for r in rows]


def subtree(conn: Connection, task_id: str) -> list[Task]:
    """The task and every descendant, parents before children."""
    root = get_task(conn, task_id)
    if root is None:
        return []
    # Every task of a tree carries root_id, so one indexed query fetches the whole tree;
    # the walk below keeps only the part under ``task_id``.
    tree = [_task(r) for r in conn.execute(select(t.tasks).where(t.tasks.c.root_id == root.root_id))]
    by_parent: dict[str | None, list[Task]] = {}
    for task in tree:
        by_parent.setdefault(task.parent_id, []).append(task)
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(by_parent.get(node.id, []))
    return out


def end_tasks(conn: Connection, task_ids: Sequence[str], state: TaskState, now: float) -> int:
    """Move active tasks to an end state; returns how many changed."""
    if not task_ids:
        return 0
    res = conn.execute(
        update(t.tasks)
        .where(and_(t.tasks.c.id.in_(task_ids), t.tasks.c.state == TaskState.ACTIVE.value))
        .values(state=state.value, closed_at=now)
    )
    return res.rowcount


def expired_active_roots(conn: Connection, now: float, limit: int = 500) -> list[Task]:
    rows = conn.execute(
        select(t.tasks)
        .where(and_(t.tasks.c.state == TaskState.ACTIVE.value, t.tasks.c.expires_at <= now))
        .order_by(t.tasks.c.depth)
        .limit(limit)
    )
    return [_task(r) for r in rows]


def active_tasks_of_agent(conn: Connection, agent: str) -> list[Task]:
    rows = conn.execute(
        select(t.tasks).where(and_(t.tasks.c.agent == agent, t.tasks.c.state == TaskState.ACTIVE.value))
    )
    return [_task(r) for r in rows]


def active_tasks_of_delegator(conn: Connection, subject: str, issuer: str | None) -> list[Task]:
    q = select(t.tasks).where(
        and_(t.tasks.c.delegator_sub == subject, t.tasks.c.state == TaskState.ACTIVE.value)
    )
    if issuer:
        q = q.where(t.tasks.c.delegator_iss == issuer)
    return [_task(r) for r in conn.execute(q)]


def all_active_tasks(conn: Connection) -> list[Task]:
    return [_task(r) for r in conn.execute(select(t.tasks).where(t.tasks.c.state == TaskState.ACTIVE.value))]


def max_sensitivity_read(conn: Connection, task_id: str) -> int:
    found = get_task_and_taint(conn, task_id)
    return found[1] if found else -1


def raise_sensitivity_read(conn: Connection, task_ids: Sequence[str], level: int) -> None:
    """Record that these tasks have now seen data of ``level`` (the taint never goes down).

    The taint is written on the task and its ancestors: a parent that delegated a read
    must not be able to send what its child read.
    """
    conn.execute(
        update(t.tasks)
        .where(and_(t.tasks.c.id.in_(task_ids), t.tasks.c.max_sensitivity_read < level))
        .values(max_sensitivity_read=level)
    )


# -- delegations ----------------------------------------------------------------------


def _delegation(row: Row[Any]) -> Delegation:
    m = row._mapping
    return Delegation(
        m["id"],
        m["parent_task_id"],
        m["child_agent"],
        scope_from_json(m["scope"]),
        m["ttl_seconds"],
        m["created_at"],
        m["expires_at"],
        m["redeemed_task_id"],
    )


def insert_delegation(conn: Connection, d: Delegation) -> None:
    conn.execute(
        insert(t.delegations).values(
            id=d.id,
            parent_task_id=d.parent_task_id,
            child_agent=d.child_agent,
            scope=scope_to_json(d.scope),
            ttl_seconds=d.ttl_seconds,
            created_at=d.created_at,
            expires_at=d.expires_at,
            redeemed_task_id=None,
        )
    )


def get_delegation(conn: Connection, delegation_id: str) -> Delegation | None:
    row = conn.execute(select(t.delegations).where(t.delegations.c.id == delegation_id)).first()
    return _delegation(row) if row else None


def redeem_delegation(conn: Connection, delegation_id: str, task_id: str) -> bool:
    """Mark a delegation used; False when someone redeemed it first (single use)."""
    res = conn.execute(
        update(t.delegations)
        .where(and_(t.delegations.c.id == delegation_id, t.delegations.c.redeemed_task_id.is_(None)))
        .values(redeemed_task_id=task_id)
    )
    return res.rowcount == 1


# -- approvals ------------------------------------------------------------------------


def _approval(row: Row[Any], now: float | None = None) -> Approval:
    """The stored approval; with ``now``, as a reader should see it then: a `pending` one
    past its expiry is `expired` already, before the leader's pass has moved it."""
    m = row._mapping
    state = ApprovalState(m["state"])
    if now is not None and state is ApprovalState.PENDING and m["expires_at"] <= now:
        state = ApprovalState.EXPIRED
    return Approval(
        m["id"],
        m["task_id"],
        m["action"],
        m["resource"],
        m["args_digest"],
        state,
        m["reason"],
        m["created_at"],
        m["expires_at"],
        m["decided_by"],
        m["decided_at"],
    )


def insert_approval(conn: Connection, a: Approval, decision_id: str) -> None:
    conn.execute(
        insert(t.approvals).values(
            id=a.id,
            task_id=a.task_id,
            action=a.action,
            resource=a.resource,
            args_digest=a.args_digest,
            state=a.state.value,
            reason=a.reason,
            created_at=a.created_at,
            expires_at=a.expires_at,
            decided_by=None,
            decided_at=None,
            decision_id=decision_id,
        )
    )


def get_approval(conn: Connection, approval_id: str) -> Approval | None:
    row = conn.execute(select(t.approvals).where(t.approvals.c.id == approval_id)).first()
    return _approval(row) if row else None


def find_approval(
    conn: Connection, task_id: str, action: str, resource: str, digest: str, states: Sequence[ApprovalState]
) -> Approval | None:
    row = conn.execute(
        select(t.approvals)
        .where(
            and_(
                t.approvals.c.task_id == task_id,
                t.approvals.c.action == action,
                t.approvals.c.resource == resource,
                t.approvals.c.args_digest == digest,
                t.approvals.c.state.in_([s.value for s in states]),
            )
        )
        .order_by(t.approvals.c.created_at.desc())
    ).first()
    return _approval(row) if row else None


def approval_state_is(state: str, now: float) -> ColumnElement[bool]:
    """Rows in ``state`` as readers see it at ``now`` (see :func:`_approval`)."""
    c = t.approvals.c
    if state == ApprovalState.PENDING:
        return and_(c.state == state, c.expires_at > now)
    if state == ApprovalState.EXPIRED:
        return or_(c.state == state, and_(c.state == ApprovalState.PENDING.value, c.expires_at <= now))
    return c.state == state


def list_approvals(
    conn: Connection, state: str | None = None, limit: int = 200, *, now: float
) -> list[Approval]:
    q = select(t.approvals).order_by(t.approvals.c.created_at.desc()).limit(limit)
    if state:
        q = q.where(approval_state_is(state, now))
    return [_approval(r, now) for r in conn.execute(q)]


def due_approvals(conn: Connection, now: float, limit: int) -> list[str]:
    """Ids of `pending` approvals past their expiry, oldest expiry first (a read: the
    pass takes the write lock only when there is something to move)."""
    c = t.approvals.c
    q = (
        select(c.id)
        .where(c.state == ApprovalState.PENDING.value, c.expires_at <= now)
        .order_by(c.expires_at)
        .limit(limit)
    )
    return [str(r[0]) for r in conn.execute(q)]


def expire_approvals(conn: Connection, ids: Sequence[str], now: float) -> list[Approval]:
    """Move these approvals from `pending` to `expired` in one compare-and-set UPDATE and
    return the ones this call moved. Two processes running it at once over the same ids
    (two leaders overlapping across a change) each get a disjoint part: on PostgreSQL the
    second UPDATE waits for the first's row locks and then re-checks `state`; SQLite
    writers hold the database's write lock from BEGIN (``store.db._sqlite_begin``)."""
    if not ids:
        return []
    c = t.approvals.c
    res = conn.execute(
        update(t.approvals)
        .where(
            c.id.in_(list(ids)),
            c.state == ApprovalState.PENDING.value,
            c.expires_at <= now,
        )
        .values(state=ApprovalState.EXPIRED.value)
        .returning(*t.approvals.c)
    )
    return [_approval(r) for r in res]


def set_approval_state(
    conn: Connection,
    approval_id: str,
    *,
    expect: ApprovalState,
    new: ApprovalState,
    by: str | None,
    now: float,
) -> bool:
    """Compare-and-set, so a grant can be consumed exactly once across replicas."""
    values: dict[str, Any] = {"state": new.value}
    if new in (ApprovalState.GRANTED, ApprovalState.REJECTED):
        values.update(decided_by=by, decided_at=now)
    res = conn.execute(
        update(t.approvals)
        .where(and_(t.approvals.c.id == approval_id, t.approvals.c.state == expect.value))
        .values(**values)
    )
    return res.rowcount == 1


# -- risk signals ---------------------------------------------------------------------


def note_resource_use(conn: Connection, agent: str, resource: str, now: float) -> None:
    """Record the agent's first use of a resource; a concurrent first use is not an error."""
    stmt = pg_insert(t.resource_uses) if conn.dialect.name == "postgresql" else sqlite_insert(t.resource_uses)
    conn.execute(stmt.values(agent=agent, resource=resource, first_at=now).on_conflict_do_nothing())


_SEEN = raw.statement("SELECT 1 FROM resource_uses WHERE agent = :agent AND resource = :resource")


def is_first_use(conn: Connection, agent: str, resource: str) -> bool:
    return raw.scalar(conn, _SEEN, {"agent": agent, "resource": resource}) is None


#: Counting stops here: a policy needs "more than N" for a burst rule, and an unbounded
#: COUNT would make every call of a runaway agent slower than the last.
CALLS_CAP = 1000
#: How long per-second call counts are kept (the leader's pass drops older ones).
CALL_COUNTS_KEPT_SECONDS = 600

_NOTE_CALL = raw.statement(
    "INSERT INTO task_call_counts (task_id, second, n) VALUES (:task_id, :second, 1) "
    "ON CONFLICT (task_id, second) DO UPDATE SET n = task_call_counts.n + 1"
)
_CALLS_AFTER = raw.statement(
    "SELECT coalesce(sum(n), 0) FROM task_call_counts WHERE task_id = :task_id AND second > :second"
)
# The first, partial second from the events themselves: reads the covering
# (task_id, type, ts) index alone. (CALLS_CAP is an int constant.)
_CALLS_BETWEEN = raw.statement(
    "SELECT count(*) FROM (SELECT 1 FROM audit_events WHERE task_id = :task_id "  # noqa: S608
    f"AND type = 'decision' AND ts >= :since AND ts < :until LIMIT {int(CALLS_CAP)}) AS recent"
)
_DROP_CALL_COUNTS = raw.statement("DELETE FROM task_call_counts WHERE second < :second")


def note_call(conn: Connection, task_id: str, ts: float) -> None:
    """Count a decision of ``task_id`` recorded at ``ts`` (its audit event's time), in the
    decision's own transaction."""
    raw.execute(conn, _NOTE_CALL, {"task_id": task_id, "second": math.floor(ts)}).close()


def calls_since(conn: Connection, task_id: str, since: float) -> int:
    """Decisions of ``task_id`` recorded at or after ``since``, up to ``CALLS_CAP``.

    Exact: the whole seconds after ``since``'s come from the per-second counts, the rest
    of its own second from the decision events (a second of a busy task: a few rows)."""
    second = math.floor(since)
    n = int(raw.scalar(conn, _CALLS_AFTER, {"task_id": task_id, "second": second}) or 0)
    if n >= CALLS_CAP:
        return CALLS_CAP
    params = {"task_id": task_id, "since": since, "until": second + 1}
    return min(CALLS_CAP, n + int(raw.scalar(conn, _CALLS_BETWEEN, params) or 0))


def drop_call_counts(conn: Connection, before: float) -> int:
    """Forget the per-second counts before ``before``; how many rows went."""
    return raw.rowcount(conn, _DROP_CALL_COUNTS, {"second": math.floor(before)})

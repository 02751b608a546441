"""Drift baselines in the store: read one (agent, intent), learn one closed task.

Learning adds to the baseline with single upserts (``tasks = tasks + 1``), so two
replicas learning tasks of the same agent at once both count.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, and_, case, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tether.store import tables as t

__all__ = ["learn_task", "load_baseline", "task_decisions"]

#: A task's decisions read when it is learnt; a runaway task's tail is not needed to
#: know what it normally does.
MAX_DECISIONS = 20_000


def load_baseline(conn: Connection, agent: str, intent: str) -> tuple[int, int, dict[tuple[str, str], int]]:
    """``(tasks learnt, peak decisions per minute, {(action, resource): tasks})``."""
    p = t.drift_profiles.c
    row = conn.execute(
        select(p.tasks, p.peak_per_minute).where(and_(p.agent == agent, p.intent == intent))
    ).first()
    if row is None:
        return 0, 0, {}
    q = t.drift_pairs.c
    pairs = {
        (str(a), str(r)): int(n)
        for a, r, n in conn.execute(
            select(q.action, q.resource, q.tasks).where(and_(q.agent == agent, q.intent == intent))
        )
    }
    return int(row[0]), int(row[1]), pairs


def task_decisions(conn: Connection, task_id: str) -> Iterator[tuple[float, dict[str, Any]]]:
    """``(ts, payload)`` of each decision event of a task, oldest first."""
    e = t.audit_events.c
    rows = conn.execute(
        select(e.ts, e.payload)
        .where(and_(e.task_id == task_id, e.type == "decision"))
        .order_by(e.ts)
        .limit(MAX_DECISIONS)
    )
    for ts, payload in rows:
        body = json.loads(payload)
        yield float(ts), body if isinstance(body, dict) else {}


def learn_task(
    conn: Connection,
    agent: str,
    intent: str,
    pairs: Iterable[tuple[str, str]],
    peak_per_minute: int,
    now: float,
) -> None:
    """Add one closed task (the pairs it used, its peak rate) to the baseline of (agent, intent)."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    p = t.drift_profiles
    stmt = insert(p).values(
        agent=agent, intent=intent, tasks=1, peak_per_minute=peak_per_minute, updated_at=now
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[p.c.agent, p.c.intent],
            set_={
                "tasks": p.c.tasks + 1,
                "peak_per_minute": case(
                    (p.c.peak_per_minute < peak_per_minute, peak_per_minute),
                    else_=p.c.peak_per_minute,
                ),
                "updated_at": now,
            },
        )
    )
    q = t.drift_pairs
    for action, resource in sorted(set(pairs)):
        pair = insert(q).values(agent=agent, intent=intent, action=action, resource=resource, tasks=1)
        conn.execute(
            pair.on_conflict_do_update(
                index_elements=[q.c.agent, q.c.intent, q.c.action, q.c.resource],
                set_={"tasks": q.c.tasks + 1},
            )
        )

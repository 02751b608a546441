"""``calls_last_minute`` from per-second counts: the same number the decision events give,
at every boundary, without scanning a busy task's last thousand events (both stores)."""

from __future__ import annotations

import math

from sqlalchemy import Connection, func, select

from tether.audit import event as ev
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.store import repo
from tether.store import tables as t

AGENT = Workload("spiffe://support.example/triage-bot", "support.example", "test")
READ = Grant("read", "tickets.queue")


def _events_since(conn: Connection, task_id: str, since: float) -> int:
    """The reference: decision events of the task at or after ``since``."""
    e = t.audit_events
    q = select(func.count()).where(e.c.task_id == task_id, e.c.type == ev.DECISION, e.c.ts >= since)
    return int(conn.execute(q).scalar_one())


def _decide(rt: Runtime, n: int) -> tuple[str, list[float]]:
    opened = rt.broker.open_task(AGENT, OpenTaskRequest("support.triage", "test", (READ,), 3600))
    for i in range(n):
        rt.broker.authorize(opened.token, AuthorizeRequest("read", "tickets.queue", {"ticket": f"T-{i}"}))
    with rt.db.read() as conn:
        e = t.audit_events
        rows = conn.execute(
            select(e.c.ts).where(e.c.task_id == opened.task.id, e.c.type == ev.DECISION).order_by(e.c.ts)
        )
        return opened.task.id, [float(r[0]) for r in rows]


def test_calls_since_equals_the_events_at_every_boundary(runtime: Runtime) -> None:
    task_id, stamps = _decide(runtime, 40)
    assert len(stamps) == 40
    probes = {stamps[0] - 61, math.floor(stamps[0]), math.floor(stamps[-1]) + 1}
    for ts in stamps:  # at each event, just before and just after it, and its second
        probes |= {ts, math.nextafter(ts, -math.inf), math.nextafter(ts, math.inf), math.floor(ts)}
    with runtime.db.read() as conn:
        for since in sorted(probes):
            assert repo.calls_since(conn, task_id, since) == _events_since(conn, task_id, since), since


def test_each_decision_adds_one_to_its_second(runtime: Runtime) -> None:
    task_id, stamps = _decide(runtime, 12)
    with runtime.db.read() as conn:
        c = t.task_call_counts
        rows = dict(conn.execute(select(c.c.second, c.c.n).where(c.c.task_id == task_id)).all())
    expected: dict[int, int] = {}
    for ts in stamps:
        expected[math.floor(ts)] = expected.get(math.floor(ts), 0) + 1
    assert rows == expected


def test_the_burst_rule_sees_the_counted_calls(runtime: Runtime) -> None:
    # What policy reads: the 6th call of a task sees the five before it.
    opened = runtime.broker.open_task(AGENT, OpenTaskRequest("support.triage", "test", (READ,), 3600))
    for i in range(5):
        req = AuthorizeRequest("read", "tickets.queue", {"ticket": f"T-{i}"})
        runtime.broker.authorize(opened.token, req)
    with runtime.db.read() as conn:
        assert repo.calls_since(conn, opened.task.id, runtime.broker.clock() - 60) == 5


def test_the_leader_drops_counts_older_than_ten_minutes(runtime: Runtime) -> None:
    task_id, stamps = _decide(runtime, 3)
    old = math.floor(stamps[0]) - repo.CALL_COUNTS_KEPT_SECONDS - 5
    with runtime.db.begin() as conn:
        conn.execute(t.task_call_counts.insert().values(task_id=task_id, second=old, n=7))
    assert runtime.broker.drop_old_call_counts() == 1
    with runtime.db.read() as conn:
        c = t.task_call_counts
        left = conn.execute(select(func.sum(c.c.n)).where(c.c.task_id == task_id)).scalar_one()
    assert left == 3

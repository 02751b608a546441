"""`tether revoke --all` on a large estate: committed batches of whole trees, resumable.

The estate is built in-process (tasks, delegated children, one jwt lease each) on both
stores; the batch size is pinned small so a few hundred tasks take several batches."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from tether.audit.verify import verify_chains
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.credentials import leases as ls
from tether.errors import InvalidRequest, Unavailable
from tether.model import Grant, Workload
from tether.server import ops
from tether.server.admin import Operator
from tether.store import credentials_tables as ct
from tether.store import tables as t

ROOT = Workload("spiffe://support.example/orchestrator", "support.example", "test")
CHILD = Workload("spiffe://support.example/helper", "support.example", "test")
READ = AuthorizeRequest("read", "tickets.queue")
GRANTS = (Grant("read", "tickets.queue"),)
ROOTS, CHILD_EVERY, BATCH = 60, 3, 10


def _estate(rt: Any) -> dict[str, list[str]]:
    """root task id → ids of its tree (root first); every task holds one live jwt lease."""
    trees: dict[str, list[str]] = {}
    for i in range(ROOTS):
        o = rt.broker.open_task(ROOT, OpenTaskRequest("support.triage", "estate", GRANTS, 600))
        assert rt.broker.authorize(o.token, READ).credential is not None
        trees[o.task.id] = [o.task.id]
        if i % CHILD_EVERY == 0:
            claims = rt.broker.verify_token(o.token)
            d = rt.broker.delegate(claims, o.task.id, CHILD.spiffe_id, GRANTS, 300)
            c = rt.broker.open_task(CHILD, OpenTaskRequest(None, "", None, 300, delegation=d.id))
            assert rt.broker.authorize(c.token, READ).credential is not None
            trees[o.task.id].append(c.task.id)
    return trees


def _states(rt: Any) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Task id → state, and task id → states of its leases (read on a fresh connection)."""
    with rt.db.read() as conn:
        tasks = {r.id: r.state for r in conn.execute(select(t.tasks.c.id, t.tasks.c.state))}
        leases: dict[str, set[str]] = {}
        for r in conn.execute(select(ct.leases.c.task_id, ct.leases.c.state)):
            leases.setdefault(r.task_id, set()).add(r.state)
    return tasks, leases


def _pin(rt: Any, size: int = BATCH) -> None:
    rt.broker.end_batch = rt.broker.end_batch_max = size


def test_kill_switch_commits_in_bounded_batches(runtime):
    """Each batch ends at most one tree past the batch size, and is committed before the next."""
    trees = _estate(runtime)
    _pin(runtime)
    seen: list[tuple[int, int, int]] = []

    def progress(done: int, remaining: int) -> None:
        tasks, _ = _states(runtime)  # another connection: only committed rows are visible
        seen.append((done, remaining, sum(1 for s in tasks.values() if s == "revoked")))

    ended = runtime.broker.revoke(everything=True, by="test", progress=progress)
    total = sum(len(x) for x in trees.values())
    assert sorted(ended) == sorted(i for x in trees.values() for i in x)
    assert len(seen) >= total // (BATCH + 1) and seen[-1][:2] == (total, 0)
    sizes = [b[0] - a[0] for a, b in zip([(0, 0, 0), *seen], seen, strict=False)]
    assert all(0 < s <= BATCH + 1 for s in sizes), sizes  # a tree of two may cross the line
    assert all(done == committed for done, _, committed in seen)
    _, leases = _states(runtime)
    assert all(states == {ls.LeaseState.REVOKED.value} for states in leases.values())


def test_interrupted_kill_switch_leaves_whole_trees_and_a_rerun_finishes(runtime):
    """Stopped after two batches: each tree is all revoked or all active, and a rerun ends the rest."""
    trees = _estate(runtime)
    _pin(runtime)
    calls = {"n": 0}

    class Interrupted(Exception):
        pass

    def progress(done: int, remaining: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupted  # as if the operator's command or the broker stopped here

    with pytest.raises(Interrupted):
        runtime.broker.revoke(everything=True, by="test", progress=progress)
    tasks, leases = _states(runtime)
    revoked = {i for i, s in tasks.items() if s == "revoked"}
    assert BATCH * 2 <= len(revoked) <= (BATCH + 1) * 2
    for tree in trees.values():
        states = {tasks[i] for i in tree}
        assert states in ({"revoked"}, {"active"}), tree
        want = {ls.LeaseState.REVOKED.value} if states == {"revoked"} else {ls.LeaseState.ACTIVE.value}
        assert all(leases[i] == want for i in tree)
    # The operator runs the same command again, batch by batch as the CLI does.
    op = Operator(uid=0, pid=0)
    rest: list[str] = []
    while True:
        out = ops.revoke(runtime, {"all": True, "max_batches": 1}, op)
        rest.extend(out["revoked"])
        if not out["remaining"]:
            break
    everyone = {i for x in trees.values() for i in x}
    assert set(rest) == everyone - revoked and len(rest) == len(set(rest))
    tasks, leases = _states(runtime)
    assert all(tasks[i] == "revoked" for i in everyone)
    assert all(leases[i] == {ls.LeaseState.REVOKED.value} for i in everyone)
    with runtime.db.read() as conn:
        ends = conn.execute(
            select(t.audit_events.c.task_id, func.count())
            .where(t.audit_events.c.type == "task.revoked")
            .group_by(t.audit_events.c.task_id)
        ).all()
    assert {r[0] for r in ends} == everyone and {r[1] for r in ends} == {1}  # each ended exactly once
    with runtime.db.read() as conn:
        assert verify_chains(conn).ok


def test_batch_cut_by_the_store_is_retried_smaller(runtime):
    """A batch the store cuts rolls back and is retried at half the size; nothing is lost."""
    # The cut is injected (a hook raising the store's own `store_unavailable` inside the batch's
    # transaction): a real watchdog cut needs a frozen server, which the store tests cover.
    trees = _estate(runtime)
    _pin(runtime, 24)
    cuts, done = {"n": 0}, [0]

    def flaky(u: Any, tasks: Any, state: Any) -> None:
        if len(tasks) > 6 and cuts["n"] < 2:
            cuts["n"] += 1
            raise Unavailable("the store did not answer in time", code="store_unavailable")

    runtime.broker.tasks_ended_hooks.insert(0, flaky)
    ended = runtime.broker.revoke(everything=True, by="test", progress=lambda n, _: done.append(n))
    assert cuts["n"] == 2 and 0 < done[1] <= 7  # 24 → 12 → 6 (+ one child)
    assert sorted(ended) == sorted(i for x in trees.values() for i in x)
    tasks, _ = _states(runtime)
    assert set(tasks.values()) == {"revoked"}


def test_max_batches_must_be_a_positive_integer(runtime):
    """`max_batches` that is not a positive integer is refused with a code naming the field."""
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(InvalidRequest) as e:
            ops.revoke(runtime, {"all": True, "max_batches": bad}, Operator(uid=0, pid=0))
        assert e.value.code == "invalid_request" and e.value.details["field"] == "max_batches"

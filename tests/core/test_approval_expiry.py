"""Unanswered approvals end in `expired`: the leader's pass moves each one exactly once
(one compare-and-set UPDATE, its `approval.expired` event in the same transaction), so the
wait histogram counts each expiry once across overlapping leaders and a change of leader;
deciding an expired approval still fails with `approval_expired`."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Connection

from tether.audit import event as ev
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.errors import Conflict
from tether.model import ApprovalState, Grant, Workload
from tether.runtime import Runtime
from tether.server.serve import reap_once
from tether.store import repo
from tether.store import tables as t
from tether.testing import capture_events

AGENT = Workload("spiffe://support.example/billing-bot", "support.example", "test")
REFUND = Grant("tool:call", "billing.refund")


def _expired_count() -> float:
    return REGISTRY.get_sample_value("tether_approval_wait_seconds_count", {"outcome": "expired"}) or 0.0


def _expired_sum() -> float:
    return REGISTRY.get_sample_value("tether_approval_wait_seconds_sum", {"outcome": "expired"}) or 0.0


def _ask(rt: Runtime, n: int) -> list[str]:
    """``n`` approvals, one per refund ticket, in one task."""
    tok = rt.broker.open_task(AGENT, OpenTaskRequest("billing.refund", "test", (REFUND,), 3600)).token
    ids = []
    for i in range(n):
        d = rt.broker.authorize(
            tok, AuthorizeRequest("tool:call", "billing.refund", {"ticket_id": f"T-{i}", "amount": 5})
        ).decision
        assert d.code == "approval_required" and d.approval_id, d
        ids.append(d.approval_id)
    return ids


def _states(rt: Runtime) -> dict[str, str]:
    with rt.db.read() as conn:
        return {a.id: a.state.value for a in repo.list_approvals(conn, None, now=0.0)}


@pytest.fixture
def second(runtime: Runtime) -> Iterator[Runtime]:
    """Another broker process on the same store (its own node id and audit chain)."""
    s = runtime.settings
    rt = Runtime.start(
        dataclasses.replace(s, node_id="node-2", identity=dataclasses.replace(s.identity, workload_socket=""))
    )
    yield rt
    rt.close()


def _past(rts: list[Runtime], t: float) -> None:
    for rt in rts:
        rt.broker.clock = lambda: t


def test_two_leaders_overlapping_move_and_count_each_expiry_once(
    runtime: Runtime, second: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both processes read the same due approvals before either writes (two leaders
    overlapping across a change); between them each approval is moved once, has one
    `approval.expired` event and one observation of its wait."""
    ids = _ask(runtime, 12)
    ttl = runtime.settings.approvals.ttl_seconds
    _past([runtime, second], time.time() + ttl + 1)
    both_read = threading.Barrier(2)
    read = repo.due_approvals

    def due_then_wait(conn: Connection, now: float, limit: int) -> list[str]:
        found = read(conn, now, limit)
        if found:  # the first read of each pass: hold it until the other has read too
            both_read.wait(10)
        return found

    monkeypatch.setattr(repo, "due_approvals", due_then_wait)
    count, total = _expired_count(), _expired_sum()
    with capture_events() as events, ThreadPoolExecutor(2) as pool:
        moved = list(pool.map(lambda rt: rt.broker.expire_approvals(), [runtime, second]))
    assert sum(moved) == len(ids), moved
    expired = [e for e in events if e.type == ev.APPROVAL_EXPIRED]
    assert sorted(e.payload["approval_id"] for e in expired) == sorted(ids)
    assert {e.chain for e in expired} <= {"node-1", "node-2"}
    assert _expired_count() - count == len(ids)
    assert _expired_sum() - total == pytest.approx(len(ids) * ttl)
    assert set(_states(runtime).values()) == {"expired"}


def test_an_expiry_before_a_change_of_leader_is_counted_once_after_it(
    runtime: Runtime, second: Runtime
) -> None:
    """The old leader moves and counts one expiry; it steps down before its next pass, so the
    approval that expired then is moved and counted by the new leader, and the first is not
    counted again."""
    first, late = _ask(runtime, 2)
    ttl = runtime.settings.approvals.ttl_seconds
    with runtime.db.read() as conn:
        expiry = {a: repo.get_approval(conn, a).expires_at for a in (first, late)}  # type: ignore[union-attr]
    wait_leader(runtime)
    count = _expired_count()
    with runtime.db.begin() as conn:  # `late` is asked for later: it is still waiting now
        conn.execute(
            t.approvals.update()
            .where(t.approvals.c.id == late)
            .values(expires_at=expiry[first] + 60, created_at=expiry[first] + 60 - ttl)
        )
    _past([runtime, second], expiry[first] + 1)
    with capture_events() as events:
        assert reap_once(runtime)
        assert not reap_once(second)  # not the leader: runs none of the cluster-wide jobs
        assert _states(runtime) == {first: "expired", late: "pending"}
        assert _expired_count() - count == 1
        runtime.leadership.release()  # type: ignore[union-attr]  # the leader goes away
        wait_leader(second)
        _past([runtime, second], expiry[first] + 61)
        assert reap_once(second)
        assert reap_once(second)  # and its next pass finds nothing more
    assert _states(runtime) == {first: "expired", late: "expired"}
    assert _expired_count() - count == 2
    by = {e.payload["approval_id"]: e.chain for e in events if e.type == ev.APPROVAL_EXPIRED}
    assert by == {first: "node-1", late: "node-2"}


def wait_leader(rt: Runtime, timeout: float = 15.0) -> None:
    """Bounded wait for ``rt`` to hold the leader lease (its renewal thread takes it over)."""
    deadline = time.monotonic() + timeout
    while not rt.is_leader():
        assert time.monotonic() < deadline, f"{rt.settings.node_id} never became leader"
        time.sleep(0.05)


def test_granting_or_rejecting_an_expired_approval_fails_with_approval_expired(runtime: Runtime) -> None:
    """Moved to `expired` by the pass, the approval still refuses a decision with its code,
    even on a replica whose clock is behind the leader's."""
    (aid,) = _ask(runtime, 1)
    with runtime.db.read() as conn:
        a = repo.get_approval(conn, aid)
    assert a is not None
    runtime.broker.clock = lambda: a.expires_at + 1
    assert runtime.broker.expire_approvals() == 1
    for grant in (True, False):
        with pytest.raises(Conflict) as err:
            runtime.broker.decide_approval(aid, grant=grant, by="uid:0")
        assert err.value.code == "approval_expired"
    runtime.broker.clock = lambda: a.expires_at - 60  # this replica's clock is behind
    with pytest.raises(Conflict) as err:
        runtime.broker.decide_approval(aid, grant=True, by="uid:0")
    assert err.value.code == "approval_expired"


def test_an_approval_the_pass_moved_after_the_decision_read_it_is_refused_as_expired(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision read the row while it was still `pending`, then the leader (its clock
    ahead of this replica's) moved it: the compare-and-set refuses, and the answer is
    `approval_expired`, not "already pending"."""
    (aid,) = _ask(runtime, 1)
    with runtime.db.read() as conn:
        stale = repo.get_approval(conn, aid)
    assert stale is not None
    runtime.broker.clock = lambda: stale.expires_at + 1
    assert runtime.broker.expire_approvals() == 1
    runtime.broker.clock = lambda: stale.expires_at - 60
    reads = iter([stale])  # the first read is the one from before the pass committed
    real = repo.get_approval
    monkeypatch.setattr(repo, "get_approval", lambda conn, i: next(reads, None) or real(conn, i))
    with pytest.raises(Conflict) as err:
        runtime.broker.decide_approval(aid, grant=True, by="uid:0")
    assert err.value.code == "approval_expired"


def test_the_same_call_after_an_expiry_asks_again(runtime: Runtime) -> None:
    """An expired approval is not reused: the identical call opens a new pending one."""
    tok = runtime.broker.open_task(AGENT, OpenTaskRequest("billing.refund", "test", (REFUND,), 3600)).token
    call = AuthorizeRequest("tool:call", "billing.refund", {"ticket_id": "T-1", "amount": 5})
    old = runtime.broker.authorize(tok, call).decision.approval_id
    assert old is not None
    with runtime.db.read() as conn:
        expires = repo.get_approval(conn, old).expires_at  # type: ignore[union-attr]
    runtime.broker.clock = lambda: expires + 1
    runtime.broker.expire_approvals()
    runtime.broker.clock = time.time  # the task itself is still open
    new = runtime.broker.authorize(tok, call).decision
    assert new.code == "approval_required" and new.approval_id not in (None, old)
    assert _states(runtime) == {old: "expired", new.approval_id: "pending"}


def test_readers_see_expired_before_the_pass_moved_it(runtime: Runtime) -> None:
    """Between its expiry and the leader's next pass an approval lists as `expired`, not
    `pending` (nobody is offered a decision that would fail)."""
    (aid,) = _ask(runtime, 1)
    with runtime.db.read() as conn:
        expires = repo.get_approval(conn, aid).expires_at  # type: ignore[union-attr]
    runtime.broker.clock = lambda: expires + 1
    assert runtime.broker.list_approvals("pending") == []
    (shown,) = runtime.broker.list_approvals("expired")
    assert shown.id == aid and shown.state is ApprovalState.EXPIRED
    assert _states(runtime) == {aid: "pending"}  # as stored: the pass has not run

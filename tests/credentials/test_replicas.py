"""Several replicas on one PostgreSQL store and one target: parallel mints, one owner per
revocation, one live process per node_id."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from _credhelp import replica_runtime, tether_roles

from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.credentials import leases as ls
from tether.credentials import reaper as reaper_mod
from tether.credentials.leases import Lease, LeaseState, Revocation
from tether.errors import ConfigError
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import capture_events

pytestmark = pytest.mark.postgresql

# Replicas share state through a PostgreSQL store (SQLite is one process's store).
_ON_POSTGRESQL = pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
AGENT = Workload("spiffe://support.example/analyst", "support.example", "test")


_replica = replica_runtime


@pytest.fixture
def replicas(pg_settings):
    rts = [_replica(pg_settings, f"node-{x}") for x in "abc"]
    yield rts
    for rt in rts:
        rt.close()


def _open(rt: Runtime) -> str:
    grants = (Grant("read", "analytics.orders"),)
    return rt.broker.open_task(AGENT, OpenTaskRequest("support.triage", "test", grants, 600)).token


@_ON_POSTGRESQL
def test_forty_parallel_mints_on_one_target_never_collide(pg_runtime, store_url):
    """40 mints at once on one target (the connector, no broker lock between them): all succeed."""
    pgc = pg_runtime.credentials.service.connectors["postgres"]
    tokens = [_open(pg_runtime) for _ in range(40)]
    results = [pg_runtime.broker.authorize(tokens[0], AuthorizeRequest("read", "analytics.orders"))]
    lease0 = results[0].credential
    assert lease0 is not None
    with pg_runtime.db.read() as conn:
        template = ls.get_lease(conn, lease0.lease_id)
    assert template is not None
    from tether.credentials.connectors.base import MintRequest

    resource = pg_runtime.catalog.get("analytics.orders")
    task = pg_runtime.broker.get_task(template.task_id)[0]
    pgc._groups.clear()  # every thread also races the group set-up
    gate = threading.Barrier(40)

    def mint(i: int) -> str | None:
        fields = {f: getattr(template, f) for f in Lease.__dataclass_fields__}
        lease = Lease(**{**fields, "id": f"lse_par{i:04d}abcdefgh"})
        gate.wait(10)
        try:
            pgc.mint(MintRequest(lease, task, resource, ("read",)))
            return None
        except Exception as exc:
            return getattr(exc, "code", repr(exc))

    with ThreadPoolExecutor(40) as pool:
        errors = [e for e in pool.map(mint, range(40)) if e]
    assert errors == []
    made = {r for r in tether_roles_of(pg_runtime) if r.startswith("tether_l_par")}
    assert len(made) == 40
    pgc.drop_roles("analytics", sorted(made))


def tether_roles_of(rt: Runtime) -> set[str]:
    return set(rt.credentials.service.connectors["postgres"].roles("analytics"))


@_ON_POSTGRESQL
def test_forty_concurrent_authorizations_across_replicas_have_no_connector_failed(replicas, store_url):
    """40 allowed calls at once, spread over three replicas minting on one target: 0 `connector_failed`."""
    tokens = [(rt, _open(rt)) for rt in replicas for _ in range(14)][:40]
    gate = threading.Barrier(len(tokens))

    def call(pair) -> str:
        rt, tok = pair
        gate.wait(10)
        d = rt.broker.authorize(tok, AuthorizeRequest("read", "analytics.orders"))
        return "minted" if d.credential is not None else str(d.decision.code)

    with ThreadPoolExecutor(len(tokens)) as pool:
        outcomes = list(pool.map(call, tokens))
    assert outcomes.count("minted") == 40, outcomes


@_ON_POSTGRESQL
def test_three_replicas_sweeping_one_backlog_revoke_each_lease_exactly_once(
    replicas, store_url, pg_server, monkeypatch, caplog
):
    """Three replicas (two workers each) drain one backlog: every lease revoked/done, none
    retrying, no failed attempt, one `credential.revoked` per lease, no warning, no role left."""
    a = replicas[0]
    for rt in replicas:  # nobody works the backlog until all start together
        rt.credentials.reaper.stop()
    tokens = [_open(a) for _ in range(45)]
    for tok in tokens:
        assert a.broker.authorize(tok, AuthorizeRequest("read", "analytics.orders")).credential is not None
    a.broker.revoke(everything=True, by="test")
    monkeypatch.setattr(reaper_mod, "BATCH", 4)  # small claims, so the workers interleave
    gate = threading.Barrier(6)

    def work(rt: Runtime) -> tuple[int, int]:
        gate.wait(10)
        return rt.credentials.reaper.process_revocations()

    caplog.set_level(logging.WARNING, logger="tether.credentials")
    with capture_events() as events, ThreadPoolExecutor(6) as pool:
        results = list(pool.map(work, replicas * 2))
    with a.db.read() as conn:
        leases = ls.list_leases(conn, limit=1000)
    assert len(leases) == 45
    assert {(x.state, x.revocation) for x in leases} == {(LeaseState.REVOKED, Revocation.DONE)}
    assert all(x.attempts == 0 and x.last_error is None for x in leases)
    assert sum(done for done, _ in results) == 45 and sum(failed for _, failed in results) == 0
    revoked = [e.lease_id for e in events if e.type == "credential.revoked"]
    assert sorted(revoked) == sorted(x.id for x in leases)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not tether_roles(pg_server)


@_ON_POSTGRESQL
def test_second_process_with_a_live_node_id_refuses_to_start(pg_settings, store_url):
    """A replica whose node_id has a live heartbeat refuses to start and says what to change;
    once the first is closed, the id is free again."""
    first = _replica(pg_settings, "node-same")
    try:
        with pytest.raises(ConfigError) as err:
            _replica(pg_settings, "node-same")
        assert err.value.code == "node_id_in_use" and err.value.details["field"] == "node_id"
        assert "node_id `node-same` is already live" in err.value.message
        assert "give each replica its own `node_id`" in err.value.message
    finally:
        first.close()
    _replica(pg_settings, "node-same").close()


@_ON_POSTGRESQL
def test_tether_up_with_the_node_id_of_a_running_broker_exits_saying_what_to_change(
    tmp_path, store_url, monkeypatch
):
    """A second `tether up` on the store of a running broker, with its node_id, exits 1 and
    tells the operator to give each replica its own node_id (not a stream of 503s)."""
    import subprocess
    import sys
    from pathlib import Path

    from tether.testing import TestTrustDomain, broker_process

    monkeypatch.setenv("TETHER_STORE", store_url)
    tether = str(Path(sys.executable).parent / "tether")
    with broker_process(tmp_path / "first", TestTrustDomain("support.example")):
        second = subprocess.run(
            [tether, "up", "--state-dir", str(tmp_path / "second"), "--listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert second.returncode == 1, second.stdout + second.stderr
    out = " ".join((second.stdout + second.stderr).split())
    assert "node_id_in_use" in out and "node_id `node-1` is already live" in out
    assert "give each replica its own `node_id`" in out


@_ON_POSTGRESQL
def test_two_replicas_never_both_reap_the_same_lease(replicas, store_url, pg_server):
    """Three replicas run a reaper pass at once over expired leases: only the leader-lease
    holder scans for them, and every lease gets exactly one `credential.revoked`."""
    import time

    for rt in replicas:
        rt.credentials.reaper.stop()
    leaders = [rt for rt in replicas if rt.is_leader()]
    assert len(leaders) == 1
    grants = (Grant("read", "analytics.orders"),)
    leases = []
    for i in range(9):
        rt = replicas[i % 3]
        tok = rt.broker.open_task(AGENT, OpenTaskRequest("support.triage", "test", grants, 2)).token
        cred = rt.broker.authorize(tok, AuthorizeRequest("read", "analytics.orders")).credential
        assert cred is not None
        leases.append(cred.lease_id)
    deadline = time.monotonic() + 30
    while True:  # bounded wait for the leases' own expiry (≤ the 2 s tasks')
        with replicas[0].db.read() as conn:
            if len(ls.expired_live(conn, time.time())) == len(leases):
                break
        assert time.monotonic() < deadline, "the leases did not expire"
        time.sleep(0.1)
    gate = threading.Barrier(3)

    def reap(rt: Runtime) -> dict[str, int]:
        gate.wait(10)
        return rt.credentials.reaper.reap()

    with capture_events() as events, ThreadPoolExecutor(3) as pool:
        outs = dict(zip([rt.settings.node_id for rt in replicas], pool.map(reap, replicas), strict=True))
        for rt in replicas:  # whatever a claim left for later
            rt.credentials.reaper.process_revocations()
    assert {n: o["expired"] for n, o in outs.items()} == {
        rt.settings.node_id: (len(leases) if rt is leaders[0] else 0) for rt in replicas
    }
    revoked = [e.lease_id for e in events if e.type == "credential.revoked"]
    assert sorted(revoked) == sorted(leases)
    assert not tether_roles(pg_server)

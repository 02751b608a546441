"""Three replica processes (`tether serve`) on one PostgreSQL store, driven over HTTP:
revocation reaches every replica, an approval granted on one is used on another, the
kill switch stops all, and a replica killed mid-close leaves nothing the others do not
finish. (In-process replicas sharing one backlog are in test_replicas.py.)"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _credhelp import DATASETS, add_analytics, tether_roles, wait_until

from _replicas import ReplicaProc, replicas
from tether.testing import BROKER_DOMAIN

pytestmark = [pytest.mark.postgresql, pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)]

AUDIENCE = f"spiffe://{BROKER_DOMAIN}/tether"
READ_Q = {"action": "read", "resource": "tickets.queue"}
READ_ORDERS = {"action": "read", "resource": "analytics.orders"}


@pytest.fixture
def three(tmp_path, store_url, domain, admin_url):
    extra = f'\n[credentials.postgres]\nanalytics = "{admin_url}"\n'
    with replicas(
        tmp_path,
        store_url,
        domain,
        3,
        config_extra=extra,
        prepare=lambda s: add_analytics(s, DATASETS),
        start=False,
    ) as reps:
        yield reps


def _start(reps: list[ReplicaProc]) -> None:
    for r in reps:
        r.start()
    for r in reps:
        r.wait_ready()


class Caller:
    """One agent's view of the replicas (keep-alive connections, like an SDK's)."""

    def __init__(self, domain: Any, reps: list[ReplicaProc], path: str = "analyst") -> None:
        self.domain, self.spiffe = domain, domain.spiffe_id(path)
        self.clients = [httpx.Client(base_url=r.url, timeout=30) for r in reps]

    def open(self, i: int, scope: list[dict[str, str]], intent: str = "support.triage") -> dict[str, Any]:
        svid = self.domain.svid(self.spiffe, AUDIENCE)
        body = {"intent": intent, "description": "replica test", "ttl_seconds": 600, "scope": scope}
        r = self.clients[i].post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {svid}"})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def authorize(self, i: int, token: str, req: dict[str, Any]) -> dict[str, Any]:
        r = self.clients[i].post("/v1/authorize", json=req, headers={"Authorization": f"Bearer {token}"})
        return dict(r.json())

    def close(self, i: int, task: dict[str, Any]) -> httpx.Response:
        auth = {"Authorization": f"Bearer {task['task_token']}"}
        return self.clients[i].post(f"/v1/tasks/{task['task_id']}/close", headers=auth)

    def shut(self) -> None:
        for c in self.clients:
            c.close()


def _tether(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "tether")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_a_closed_task_is_refused_by_every_replica_within_a_second(three, domain):
    """Close on one replica; the other two refuse the task's token within 1 s (p99 printed)."""
    _start(three)
    agent = Caller(domain, three)
    lags: list[float] = []
    try:
        for round_ in range(15):
            owner = round_ % 3
            task = agent.open(owner, [READ_Q])
            for i in range(3):
                assert agent.authorize(i, task["task_token"], READ_Q)["decision"] == "allow"
            assert agent.close(owner, task).status_code == 200
            closed = time.monotonic()
            for i in (x for x in range(3) if x != owner):
                while agent.authorize(i, task["task_token"], READ_Q)["decision"] != "deny":
                    assert time.monotonic() - closed < 5, "a replica still allows a closed task"
                lags.append(time.monotonic() - closed)
    finally:
        agent.shut()
    s = sorted(lags)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    print(
        f"closed task refused by another replica: n={len(s)} p50 {statistics.median(s) * 1000:.1f} ms "
        f"p99 {p99 * 1000:.1f} ms max {s[-1] * 1000:.1f} ms"
    )
    assert s[-1] <= 1.0


def test_an_approval_granted_on_one_replica_is_used_on_another(three, domain):
    """approval_required on replica 0, granted through replica 1's admin socket, allowed
    once on replica 2 (and then consumed everywhere)."""
    _start(three)
    agent = Caller(domain, three, "billing-bot")
    try:
        task = agent.open(0, [{"action": "tool:call", "resource": "billing.refund"}], intent="billing.refund")
        call = {
            "action": "tool:call",
            "resource": "billing.refund",
            "arguments": {"ticket_id": "T-7", "amount": 25},
        }
        d = agent.authorize(0, task["task_token"], call)
        assert d["decision"] == "approval_required", d
        granted = _tether("approve", d["approval_id"], "--state-dir", str(three[1].state_dir), "--json")
        assert granted.returncode == 0, granted.stdout + granted.stderr
        assert agent.authorize(2, task["task_token"], call)["decision"] == "allow"
        assert agent.authorize(1, task["task_token"], call)["decision"] == "approval_required"
    finally:
        agent.shut()


def test_the_kill_switch_on_one_replica_stops_every_replica(three, domain):
    """`tether revoke --all` through replica 1: every task opened on any replica is refused
    on every replica as soon as the command returns."""
    _start(three)
    agent = Caller(domain, three)
    try:
        tasks = [agent.open(i, [READ_Q]) for i in range(3)]
        for t in tasks:
            assert agent.authorize(0, t["task_token"], READ_Q)["decision"] == "allow"
        out = _tether("revoke", "--all", "--state-dir", str(three[1].state_dir), "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        for t in tasks:
            for i in range(3):
                d = agent.authorize(i, t["task_token"], READ_Q)
                assert d["decision"] == "deny", (i, d)
    finally:
        agent.shut()


def test_a_replica_killed_mid_close_leaves_nothing_the_others_do_not_finish(three, domain, pg_server):
    """Replica 0 dies (SIGKILL) right after a close commits, before it cuts the task's
    PostgreSQL role: the surviving replicas revoke the lease and drop the role."""
    three[0].env["TETHER_FAILPOINT"] = "task.ended_before_cut"
    _start(three)
    agent = Caller(domain, three)
    try:
        task = agent.open(0, [READ_ORDERS])
        d = agent.authorize(0, task["task_token"], READ_ORDERS)
        assert d["decision"] == "allow" and d.get("credential"), d
        assert tether_roles(pg_server)
        with pytest.raises(httpx.TransportError):
            agent.close(0, task)  # the process kills itself after the commit
        assert three[0].proc is not None and three[0].proc.wait(10) == -9
        for i in (1, 2):
            assert agent.authorize(i, task["task_token"], READ_ORDERS)["decision"] == "deny"
        wait_until(lambda: not tether_roles(pg_server), timeout=60, what="the survivors to drop the role")
    finally:
        agent.shut()

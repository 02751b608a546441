"""`tether policy reload` under `tether serve --workers 2` reaches both workers: the admin
socket is served by worker 0 alone, which passes the reload on to the other worker and
reports how many applied it. Which worker decided is read from the audit log (each worker
writes its own chain, `node-1-w<i>`), over many new connections until both have answered."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tether.config import load_settings
from tether.testing import TestTrustDomain, prepare_state

READ_Q = {"action": "read", "resource": "tickets.queue"}
CHAINS = {"node-1-w0", "node-1-w1"}
FREEZE = '@id("freeze")\n@reason("test: everything is frozen")\nforbid (principal, action, resource);\n'
BROKEN = "permit (principal, action, resource"  # does not parse


def _tether(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "tether")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=180)


class Broker:
    def __init__(self, tmp_path: Path) -> None:
        self.domain = TestTrustDomain("support.example")
        self.state = tmp_path / "state"
        prepare_state(self.state, self.domain, '\n[identity]\ndpop = "optional"\n')
        settings = load_settings(self.state, environ={})
        self.audience, self.db = settings.broker_audience, self.state / "tether.db"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{s.getsockname()[1]}"
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "tether"), "serve", "--state-dir", str(self.state),
             "--listen", self.url.removeprefix("http://"), "--workers", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200 and self.chains() >= CHAINS:
                    return
            except (httpx.TransportError, sqlite3.Error):
                pass
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)  # bounded poll on the worker processes

    def chains(self) -> set[str]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return {r[0] for r in conn.execute("SELECT chain FROM audit_chains")}

    def chain_of(self, decision_id: str) -> str:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            row = conn.execute(
                "SELECT chain FROM audit_events WHERE type = 'decision' AND decision_id = ?", (decision_id,)
            ).fetchone()
        assert row is not None, f"no audit event for {decision_id}"
        return str(row[0])

    def open_task(self) -> str:
        svid = self.domain.svid("agent", self.audience)
        body = {
            "intent": "support.triage",
            "description": "reload test",
            "ttl_seconds": 600,
            "scope": [READ_Q],
        }
        r = httpx.post(
            self.url + "/v1/tasks", json=body, headers={"Authorization": f"Bearer {svid}"}, timeout=30
        )
        assert r.status_code == 201, r.text
        return str(r.json()["task_token"])

    def decisions_by_worker(self, token: str, *, timeout: float = 60) -> dict[str, set[str]]:
        """Authorize on a new connection each time until both workers have decided at
        least three times; the outcomes each worker gave."""
        return {c: set(v) for c, v in self.decisions(token, timeout=timeout).items()}

    def decisions(self, token: str, *, timeout: float = 60) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {c: [] for c in CHAINS}
        deadline = time.monotonic() + timeout
        while min(len(v) for v in seen.values()) < 3:
            assert time.monotonic() < deadline, f"both workers did not answer: {seen}"
            with httpx.Client(base_url=self.url, timeout=30) as fresh:  # a new connection
                d = fresh.post(
                    "/v1/authorize", json=READ_Q, headers={"Authorization": f"Bearer {token}"}
                ).json()
            seen[self.chain_of(d["decision_id"])].append(d["decision"])
        return seen

    def reload(self) -> tuple[int, dict[str, Any]]:
        return self.admin("reload")

    def admin(self, *args: str) -> tuple[int, dict[str, Any]]:
        r = _tether("policy", *args, "--state-dir", str(self.state), "--json")
        return r.returncode, json.loads(r.stdout)

    def loaded_events(self) -> dict[str, int]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT chain, count(*) FROM audit_events WHERE type = 'policy.loaded' GROUP BY chain"
            ).fetchall()
        return {str(c): int(n) for c, n in rows}

    def output(self) -> str:
        return (self.proc.stdout.read() if self.proc.stdout else b"").decode()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=5)
            raise
        return self.proc.returncode


def test_policy_reload_reaches_every_worker_and_a_bad_candidate_none(tmp_path):
    """A reload that forbids everything: both workers deny at once, and the reply says 2 of
    2 workers (two pids) applied it. Then a candidate that does not parse (and would lift
    the freeze): refused, exit 1, no worker loads anything, both go on denying. Then a good
    one: both allow again."""
    broker = Broker(tmp_path)
    policies = broker.state / "policies"
    try:
        broker.wait_ready()
        token = broker.open_task()
        assert broker.decisions_by_worker(token) == {c: {"allow"} for c in CHAINS}

        (policies / "90-freeze.cedar").write_text(FREEZE)
        code, result = broker.reload()
        assert code == 0, result
        workers = result["workers"]
        assert (workers["applied"], workers["total"]) == (2, 2), workers
        assert [r["worker"] for r in workers["results"]] == [0, 1]
        assert len({r["pid"] for r in workers["results"]}) == 2
        assert {r["policy_version"] for r in workers["results"]} == {result["policy_version"]}
        # Right after the reply, every new connection on either worker sees the new set.
        assert broker.decisions_by_worker(token) == {c: {"deny"} for c in CHAINS}
        loaded = broker.loaded_events()

        (policies / "90-freeze.cedar").unlink()
        (policies / "91-broken.cedar").write_text(BROKEN)
        code, refused = broker.reload()
        assert code != 0 and refused["error"]["code"] == "policy_invalid", refused
        assert broker.decisions_by_worker(token) == {c: {"deny"} for c in CHAINS}  # the freeze stays
        assert broker.loaded_events() == loaded  # no worker put anything in force

        (policies / "91-broken.cedar").unlink()
        code, result = broker.reload()
        assert code == 0 and result["workers"]["applied"] == 2, result
        assert broker.decisions_by_worker(token) == {c: {"allow"} for c in CHAINS}
    finally:
        status = broker.stop()
    assert status == 0, broker.output()


def test_shadow_and_promote_reach_every_worker(tmp_path):
    """`tether policy shadow DIR` puts the candidate beside the enforced set on both
    workers (its counters sum both workers' decisions); `tether policy promote` then puts
    it in force on both, and the shadow is gone everywhere."""
    broker = Broker(tmp_path)
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    for f in (broker.state / "policies").glob("*.cedar"):
        (candidate / f.name).write_bytes(f.read_bytes())
    (candidate / "90-freeze.cedar").write_text(FREEZE)
    try:
        broker.wait_ready()
        token = broker.open_task()
        code, shadowed = broker.admin("shadow", str(candidate))
        assert code == 0 and shadowed["workers"]["applied"] == 2, shadowed
        made = broker.decisions(token)
        assert {c: set(v) for c, v in made.items()} == {c: {"allow"} for c in CHAINS}  # shadow never acts
        code, status = broker.admin("shadow")
        total = sum(len(v) for v in made.values())
        assert (status["counters"]["evaluated"], status["counters"]["diverged"]) == (total, total), status

        code, promoted = broker.admin("promote")
        assert code == 0 and promoted["workers"]["applied"] == 2, promoted
        assert broker.decisions_by_worker(token) == {c: {"deny"} for c in CHAINS}
        code, status = broker.admin("shadow")
        assert status["shadow"] is None and status["workers"]["applied"] == 2, status
    finally:
        status_code = broker.stop()
    assert status_code == 0, broker.output()

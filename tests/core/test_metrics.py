"""`/metrics`: Prometheus text for allowed addresses only, fed from the audit chain and the
store, summed over `--workers` processes."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tether.broker import OpenTaskRequest
from tether.config import load_settings
from tether.errors import ConfigError
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import TestTrustDomain, make_settings, prepare_state

READ_Q = {"action": "read", "resource": "tickets.queue"}
_SQLITE = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


def _value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` of a Prometheus text page (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


@pytest.fixture
def local(runtime: Runtime):
    """A client that connects from loopback (the default allow-list)."""
    with TestClient(create_app(runtime), raise_server_exceptions=False, client=("127.0.0.1", 50000)) as c:
        yield c


@_SQLITE
def test_decisions_are_counted_by_outcome_and_code_with_their_latency(local, runtime, domain, make_agent):
    """An allow and an out-of-scope deny move their counters and the latency histogram;
    the store gauges show the open task and the chain's head age."""
    before = local.get("/metrics").text
    agent = type(make_agent("orchestrator"))(local, domain, runtime, "orchestrator")  # over `local`
    tok = agent.open([READ_Q]).json()["task_token"]
    assert agent.authorize(tok, "read", "tickets.queue").json()["decision"] == "allow"
    assert agent.authorize(tok, "read", "billing.invoices").json()["code"] == "out_of_scope"
    r = local.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("tether_decisions_total", outcome="allow", code="") == 1
    assert delta("tether_decisions_total", outcome="deny", code="out_of_scope") == 1
    assert delta("tether_decision_seconds_count") == 2
    assert delta("tether_audit_append_seconds_count") >= 3  # open + two decisions
    assert _value(after, "tether_tasks_open") == 1
    assert _value(after, "tether_store_up") == 1
    assert _value(after, "tether_leases", state="irrevocable") == 0
    assert _value(after, "tether_approvals_pending") == 0
    assert 'tether_audit_chain_head_age_seconds{chain="node-1"}' in after
    assert _value(after, "tether_leader_epoch", holder="node-1") >= 1


@_SQLITE
def test_metrics_from_an_address_outside_the_allow_list_are_forbidden(runtime):
    """A scraper not in `metrics.allow` gets 403 `metrics_forbidden`, and no numbers."""
    with TestClient(create_app(runtime), client=("203.0.113.9", 4000)) as c:
        r = c.get("/metrics")
    assert r.status_code == 403 and r.json()["code"] == "metrics_forbidden"
    assert "tether_" not in r.text
    with TestClient(create_app(runtime)) as c:  # not an IP address at all: refused too
        assert c.get("/metrics").json()["code"] == "metrics_forbidden"


def test_an_allow_list_entry_that_is_not_a_network_is_refused_at_load(tmp_path):
    """`metrics.allow = ["everyone"]` is a config error naming the field."""
    with pytest.raises(ConfigError) as err:
        make_settings(tmp_path / "s", overrides={"metrics": {"allow": ["everyone"]}})
    assert err.value.details["field"] == "metrics.allow"


def test_a_store_failure_reports_the_store_down_and_is_counted(tmp_path, monkeypatch):
    """With the store gone a scrape still answers 200: `tether_store_up 0`, the error counted."""
    rt = Runtime.start(make_settings(tmp_path / "s", overrides={"identity": {"workload_socket": ""}}))
    try:
        with TestClient(create_app(rt), client=("127.0.0.1", 1)) as c:
            before = _value(c.get("/metrics").text, "tether_store_errors_total", code="store_unavailable")
            from sqlalchemy import create_engine

            monkeypatch.setattr(rt.db, "engine", create_engine("sqlite:////nonexistent/dir/x.db"))
            r = c.get("/metrics")
        assert r.status_code == 200
        assert _value(r.text, "tether_store_up") == 0
        # At least this scrape's failure (the heartbeat and reaper threads may meet the broken store too).
        assert _value(r.text, "tether_store_errors_total", code="store_unavailable") >= before + 1
    finally:
        monkeypatch.undo()
        rt.close()


def test_two_workers_report_the_sum_of_both_workers_decisions(tmp_path: Path):
    """`tether serve --workers 2`: every scrape, whichever worker answers it, counts the
    decisions made on both workers and shows both workers' feed followers."""
    state = tmp_path / "state"
    prepare_state(state, TestTrustDomain("support.example"), '\n[identity]\ndpop = "optional"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    tether = str(Path(sys.executable).parent / "tether")
    proc = subprocess.Popen(
        [tether, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    opener: Runtime | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)  # bounded poll for the workers to bind
        overrides = {"node_id": "test-opener", "identity": {"workload_socket": "", "dpop": "optional"}}
        opener = Runtime.start(load_settings(state, environ={}, overrides=overrides))
        wl = Workload("spiffe://support.example/w", "support.example", "jwt-svid")
        grants = (Grant("read", "tickets.queue"),)
        tok = opener.broker.open_task(wl, OpenTaskRequest("support.triage", "w", grants, 600)).token
        chains: set[str] = set()
        n = 0
        # New connections until both workers decided at least once (the kernel picks).
        while len(chains) < 2 and n < 200:
            with httpx.Client(base_url=url) as c:
                r = c.post("/v1/authorize", json=READ_Q, headers={"Authorization": f"Bearer {tok}"})
            assert r.json()["decision"] == "allow"
            n += 1
            with opener.db.read() as conn:
                from sqlalchemy import text

                q = text("SELECT DISTINCT chain FROM audit_events WHERE type = 'decision'")
                chains = {row[0] for row in conn.execute(q)}
        assert chains == {"node-1-w0", "node-1-w1"}
        for _ in range(6):  # several scrapes, new connections: either worker may answer
            with httpx.Client(base_url=url) as c:
                page = c.get("/metrics").text
            assert _value(page, "tether_decisions_total", outcome="allow", code="") == n
            for worker in ("node-1-w0", "node-1-w1"):  # each worker's feed follower, whoever answers
                assert f'tether_revocation_feed_lag_seconds_count{{replica="{worker}"}}' in page
                assert _value(page, "tether_revocation_feed_poll_age_seconds", replica=worker) < 10
    finally:
        if opener is not None:
            opener.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()


def _page_when(client, pred, timeout: float = 10.0, what: str = "condition") -> str:
    """Scrape until ``pred(page)`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred(page := client.get("/metrics").text):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # bounded poll: the follower runs in its own thread
    return page


@_SQLITE
def test_a_close_moves_this_replicas_feed_lag_and_its_poll_age_is_fresh(local, runtime, domain, make_agent):
    """The task's end is a feed entry: this replica's follower applies it, so
    `tether_revocation_feed_lag_seconds{replica="node-1"}` counts it, and the follower's poll
    and newest-entry ages are seconds, not the time since start."""
    agent = type(make_agent("orchestrator"))(local, domain, runtime, "orchestrator")
    count = 'tether_revocation_feed_lag_seconds_count{replica="node-1"}'
    first = _page_when(local, lambda t: count in t, what="the follower")
    body = agent.open([READ_Q]).json()
    auth = {"Authorization": f"Bearer {body['task_token']}"}
    assert local.post(f"/v1/tasks/{body['task_id']}/close", headers=auth).status_code == 200
    name = "tether_revocation_feed_lag_seconds_count"
    page = _page_when(local, lambda t: _value(t, name) > _value(first, name), what="the close to be applied")
    assert _value(page, name, replica="node-1") == _value(first, name, replica="node-1") + 1
    # This close's lag alone (the sum may hold entries committed while the fixture started),
    # bounded loosely: seconds on a loaded machine, where the point is that it is a lag at all.
    lag_sum = "tether_revocation_feed_lag_seconds_sum"
    assert _value(page, lag_sum, replica="node-1") - _value(first, lag_sum, replica="node-1") < 30
    assert _value(page, "tether_revocation_feed_poll_age_seconds", replica="node-1") < 5
    assert _value(page, "tether_revocation_feed_newest_entry_age_seconds", replica="node-1") < 5
    polled = _value(page, "tether_revocation_feed_last_poll_timestamp_seconds", replica="node-1")
    assert polled > time.time() - 5


@_SQLITE
def test_the_approval_wait_is_observed_when_granted_rejected_or_expired(local, runtime, make_agent):
    """Grant, reject: observed at the decision from the stored request time; expired
    unanswered: observed once, when the leader's periodic pass moves it to `expired`, and
    no longer counted as pending."""
    from tether.server.serve import reap_once

    agent = make_agent("billing-bot")
    tok = agent.open([{"action": "tool:call", "resource": "billing.refund"}], intent="billing.refund").json()[
        "task_token"
    ]

    def ask(ticket: str) -> str:
        d = agent.authorize(tok, "tool:call", "billing.refund", {"ticket_id": ticket, "amount": 5}).json()
        assert d["decision"] == "approval_required", d
        return str(d["approval_id"])

    before = local.get("/metrics").text
    runtime.broker.decide_approval(ask("T-1"), grant=True, by="uid:0")
    runtime.broker.decide_approval(ask("T-2"), grant=False, by="uid:0")
    left = ask("T-3")
    mid = local.get("/metrics").text
    name = "tether_approval_wait_seconds_count"
    for outcome, n in (("granted", 1), ("rejected", 1), ("expired", 0)):
        assert _value(mid, name, outcome=outcome) - _value(before, name, outcome=outcome) == n, outcome
    assert 0 <= _value(mid, "tether_approval_wait_seconds_sum", outcome="granted") < 60
    assert _value(mid, "tether_approvals_pending") == 1

    expires = next(a.expires_at for a in runtime.broker.list_approvals("pending") if a.id == left)
    runtime.broker.clock = lambda: expires + 1  # past its expiry, nobody having answered
    assert reap_once(runtime)
    after = local.get("/metrics").text
    assert _value(after, name, outcome="expired") - _value(before, name, outcome="expired") == 1
    ttl = runtime.settings.approvals.ttl_seconds
    assert _value(after, "tether_approval_wait_seconds_sum", outcome="expired") - _value(
        before, "tether_approval_wait_seconds_sum", outcome="expired"
    ) == pytest.approx(ttl)
    assert _value(after, "tether_approvals_pending") == 0
    assert _value(after, "tether_approvals_oldest_wait_seconds") == 0
    runtime.broker.clock = lambda: expires + 600
    assert reap_once(runtime)  # the next pass does not count it again
    again = local.get("/metrics").text
    assert _value(again, name, outcome="expired") == _value(after, name, outcome="expired")


@_SQLITE
def test_a_jwt_lease_revoked_at_close_carries_the_tasks_stored_end_into_the_lag(
    local, runtime, domain, make_agent
):
    """The close revokes the task's `jwt` lease in its own transaction: `credential.revoked`
    carries `task_ended_at` = the task's stored `closed_at`, and the lag is observed from it."""
    from sqlalchemy import select

    from tether.store import tables as t
    from tether.testing import capture_events

    agent = type(make_agent("orchestrator"))(local, domain, runtime, "orchestrator")
    body = agent.open([READ_Q]).json()
    d = agent.authorize(body["task_token"], "read", "tickets.queue").json()
    assert d["decision"] == "allow" and d["credential"]["kind"] == "jwt", d
    before = local.get("/metrics").text
    auth = {"Authorization": f"Bearer {body['task_token']}"}
    with capture_events() as events:
        assert local.post(f"/v1/tasks/{body['task_id']}/close", headers=auth).status_code == 200
    after = local.get("/metrics").text
    revoked = [e for e in events if e.type == "credential.revoked"]
    assert len(revoked) == 1 and revoked[0].payload["reason"] == "task_closed"
    with runtime.db.read() as conn:
        closed_at = conn.execute(select(t.tasks.c.closed_at).where(t.tasks.c.id == body["task_id"])).scalar()
    assert revoked[0].payload["task_ended_at"] == pytest.approx(closed_at, abs=0.05)
    name = "tether_revocation_lag_seconds_count"
    assert _value(after, name) - _value(before, name) == 1
    lag = _value(after, "tether_revocation_lag_seconds_sum") - _value(
        before, "tether_revocation_lag_seconds_sum"
    )
    assert 0 <= lag < 1.0

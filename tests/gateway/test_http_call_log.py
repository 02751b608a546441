"""Call records are group committed (``CallLog``): records of concurrent calls share one
audit unit, each caller returns only once its record is committed, one bad record never
costs the others theirs, and a gateway killed with SIGKILL under load leaves no
acknowledged decision without its committed event and no call record without its decision."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tether.audit import event as ev
from tether.audit.verify import verify_chains
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.gateway.authorizer import LocalAuthorizer, Verdict
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import make_settings

from .conftest import free_port, wait_http

CHILD = Path(__file__).with_name("_gateway_child.py")
READ = AuthorizeRequest(action="http:read", resource="tickets.queue", method="GET", path="/queue")


def _open_task(rt: Runtime, domain: Any) -> str:
    wl = Workload(domain.spiffe_id("agents/kill"), domain.name, "jwt-svid")
    opened = rt.broker.open_task(
        wl, OpenTaskRequest("support.triage", "kill test", (Grant("http:read", "tickets.queue"),), 3600)
    )
    return opened.token


def _calls_committed(rt: Runtime) -> list[dict[str, Any]]:
    with rt.db.read() as conn:
        rows = conn.execute(
            text("SELECT decision_id, payload FROM audit_events WHERE type = 'call.forwarded' ORDER BY seq")
        ).all()
    return [{"decision_id": r[0], "payload": r[1]} for r in rows]


@pytest.fixture
def allowed(runtime: Runtime, domain: Any) -> tuple[LocalAuthorizer, Verdict]:
    authorizer = LocalAuthorizer(runtime)
    verdict = asyncio.run(authorizer.authorize(_open_task(runtime, domain), READ))
    assert verdict.allowed, verdict.decision
    return authorizer, verdict


def test_concurrent_call_records_share_one_commit(runtime, allowed):
    """Twelve records sent together are one audit unit, and every one of them is committed."""
    authorizer, verdict = allowed
    units: list[float] = []
    runtime.audit.append_hooks.append(units.append)

    async def main() -> None:
        await asyncio.gather(*(authorizer.record(ev.CALL_FORWARDED, verdict, {"n": i}) for i in range(12)))

    asyncio.run(main())
    assert len(units) == 1
    calls = _calls_committed(runtime)
    assert len(calls) == 12 and {c["decision_id"] for c in calls} == {verdict.decision_id}


def test_waiting_record_joins_an_urgent_one_at_once(runtime, allowed):
    """A record written after its reply lingers for company; a record someone waits on
    (an MCP call's) does not wait for it, and takes the lingering one along in its commit."""
    authorizer, verdict = allowed
    units: list[float] = []
    runtime.audit.append_hooks.append(units.append)

    async def main() -> int:
        after = asyncio.ensure_future(
            authorizer.record(ev.CALL_FORWARDED, verdict, {"n": "after"}, after_reply=True)
        )
        await asyncio.sleep(0)  # it is appended and lingering
        assert not after.done() and _calls_committed(runtime) == []
        await authorizer.record(ev.CALL_RESULT, verdict, {"n": "urgent"})
        committed = len(_calls_committed(runtime))  # the lingering one went with it
        await after
        return committed

    assert asyncio.run(main()) == 1
    assert len(units) == 1


def test_record_returns_only_once_committed(runtime, allowed):
    """When ``record`` returns, the event is in the store (read back on another connection)."""
    authorizer, verdict = allowed

    async def main() -> list[int]:
        seen = []
        for i in range(3):
            await authorizer.record(ev.CALL_FORWARDED, verdict, {"n": i})
            seen.append(len(_calls_committed(runtime)))
        return seen

    assert asyncio.run(main()) == [1, 2, 3]


def test_unwritable_record_does_not_cost_the_batch_its_records(runtime, allowed):
    """A record that cannot be written (a NaN payload) fails alone; the others in its batch commit."""
    authorizer, verdict = allowed

    async def main() -> list[Any]:
        payloads: list[dict[str, Any]] = [{"n": i} for i in range(5)]
        payloads.insert(2, {"n": float("nan")})
        return await asyncio.gather(
            *(authorizer.record(ev.CALL_FORWARDED, verdict, p) for p in payloads), return_exceptions=True
        )

    results = asyncio.run(main())
    assert [type(r) for r in results if r is not None] == [ValueError]
    assert results[2] is not None
    assert len(_calls_committed(runtime)) == 5


@pytest.mark.slow
def test_kill_9_under_load_leaves_no_acknowledged_decision_unrecorded(tmp_path, store_url, domain, upstream):
    """SIGKILL the gateway while 8 clients call it: every answered call's decision is
    committed, every committed call record names a committed decision, the chain verifies."""
    settings = make_settings(tmp_path / "state", store_url=store_url, domain=domain)
    rt = Runtime.start(settings)
    try:
        token = _open_task(rt, domain)
    finally:
        rt.close()
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(settings.state_dir), settings.store_url, str(port), upstream.url]
    )
    url = f"http://127.0.0.1:{port}/tickets/queue"
    acknowledged: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.get(url)
                except httpx.HTTPError:
                    return  # the gateway is gone
                with lock:
                    if r.status_code != 200:
                        refused.append(r.text)
                        return
                    acknowledged.append(r.headers["x-tether-decision-id"])

    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=90)  # a broker starting on a busy host
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        # Well into the load, with calls in flight (under the shipped 120-a-minute burst rule).
        while len(acknowledged) < 80:
            assert not refused, refused[0]
            assert time.monotonic() < deadline, "the gateway answered too few calls"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop.set()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    for t in threads:
        t.join(timeout=15)

    rt = Runtime.start(settings)
    try:
        with rt.db.read() as conn:
            decided = {
                r[0]
                for r in conn.execute(text("SELECT decision_id FROM audit_events WHERE type = 'decision'"))
            }
            report = verify_chains(conn)
        calls = _calls_committed(rt)
    finally:
        rt.close()
    assert not refused, refused[0]
    decided.discard(None)
    assert set(acknowledged) <= decided
    assert calls and {c["decision_id"] for c in calls} <= decided
    assert report.ok, report.first

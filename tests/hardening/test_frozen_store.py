"""A frozen store (PostgreSQL stopped with SIGSTOP) is a bounded 503 `store_unavailable`,
never a hang. The server frozen here is a dedicated one this test starts itself."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import make_settings

try:
    from .. import _pg  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import _pg  # type: ignore[import-not-found,no-redef,unused-ignore]

pytestmark = pytest.mark.postgresql
READ_Q = {"action": "read", "resource": "tickets.queue"}
BUDGET_MS = 1000


@pytest.fixture
def own_pg(pg_server):
    """A throwaway PostgreSQL server private to this test (never the session-wide one).

    Asking for ``pg_server`` reuses its one rule for missing binaries (fail under CI or
    TETHER_TEST_PG); this test never touches that server.
    """
    with _pg.running_server(port=54329) as server:
        yield server


def _server_pids(data_dir: Path) -> list[int]:
    """The postmaster and every process it forked (backends, checkpointer, walwriter…)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry))
    return pids


@contextlib.contextmanager
def frozen(server):
    pids = _server_pids(server.data_dir)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_frozen_store_is_a_bounded_503_not_a_hang(tmp_path, own_pg, domain):
    """SIGSTOPped PostgreSQL: authorize answers 503 `store_unavailable` within its budget."""
    url = own_pg.url(own_pg.create_database())
    settings = make_settings(
        tmp_path / "state",
        store_url=url,
        domain=domain,
        overrides={"limits": {"store_timeout_ms": BUDGET_MS}},
    )
    rt = Runtime.start(settings)
    try:
        with TestClient(create_app(rt), raise_server_exceptions=False) as client:
            svid = domain.svid("orchestrator", settings.broker_audience)
            opened = client.post(
                "/v1/tasks",
                json={"intent": "support.triage", "scope": [READ_Q], "ttl_seconds": 600},
                headers={"Authorization": f"Bearer {svid}"},
            )
            assert opened.status_code == 201, opened.text
            auth = {"Authorization": f"Bearer {opened.json()['task_token']}"}
            assert client.post("/v1/authorize", json=READ_Q, headers=auth).status_code == 200

            answers: list[tuple[int, str, float]] = []

            def call() -> None:
                t0 = time.monotonic()
                r = client.post("/v1/authorize", json=READ_Q, headers=auth)
                answers.append((r.status_code, r.json().get("code", ""), time.monotonic() - t0))

            with frozen(own_pg):
                # Three at once: one holds the audit lock, the others wait for it (bounded too).
                threads = [threading.Thread(target=call) for _ in range(3)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=30)
                assert not any(t.is_alive() for t in threads), "a request hung on the frozen store"
            print(f"\nfrozen-store answers: {[(s, c, round(d, 2)) for s, c, d in answers]}")
            assert [(s, c) for s, c, _ in answers] == [(503, "store_unavailable")] * 3
            # Generous: the budget is 1 s; a hang would be unbounded.
            assert max(d for *_, d in answers) < 8 * BUDGET_MS / 1000
            # Thawed, the broker recovers on its own (the cut connections were discarded).
            deadline = time.monotonic() + 15
            while client.post("/v1/authorize", json=READ_Q, headers=auth).status_code != 200:
                assert time.monotonic() < deadline, "the broker did not recover after the store thawed"
    finally:
        rt.close()

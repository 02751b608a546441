"""`tether serve --workers N`: one socket, N processes, each its own audit chain, and the
periodic jobs (expiry, key rotation, reaping) run by the leader-lease holder only."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy import text

from tether.broker import OpenTaskRequest
from tether.config import load_settings
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, prepare_state


def _poll(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # bounded poll on other processes


@contextlib.contextmanager
def _two_workers(tmp_path: Path) -> Iterator[tuple[Path, int, Runtime]]:
    """``tether serve --workers 2`` on a fresh state dir, up with both workers' chains, and
    another writer on the same store (as a second replica would be; no sockets of its own):
    (state dir, port, that writer). SIGTERM at the end must stop every worker cleanly."""
    state = tmp_path / "state"
    prepare_state(state, TestTrustDomain("support.example"), '\n[identity]\ndpop = "optional"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tether = str(Path(sys.executable).parent / "tether")
    proc = subprocess.Popen(
        [tether, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    opener: Runtime | None = None
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None  # fail below rather than wait out the deadline

        _poll(ready, 60, "the workers to answer")
        assert proc.poll() is None
        overrides = {"node_id": "test-opener", "identity": {"workload_socket": "", "dpop": "optional"}}
        opener = Runtime.start(load_settings(state, environ={}, overrides=overrides))
        writer = opener

        def chains() -> set[str]:
            with writer.db.read() as conn:
                return {r[0] for r in conn.execute(text("SELECT chain FROM audit_chains"))}

        _poll(lambda: {"node-1-w0", "node-1-w1"} <= chains(), 60, "both workers' chains")
        yield state, port, opener
    finally:
        if opener is not None:
            opener.close()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        out = proc.stdout.read().decode() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    assert code == 0, out


def test_two_workers_serve_one_port_and_only_the_leader_reaps(tmp_path: Path):
    """Both workers start on the shared socket with their own chains; an expired task is
    expired exactly once, by the worker holding the leader lease; SIGTERM stops them all
    cleanly."""
    with _two_workers(tmp_path) as (state, _port, opener):
        wl = Workload("spiffe://support.example/w", "support.example", "jwt-svid")
        task = opener.broker.open_task(
            wl, OpenTaskRequest("support.triage", "w", (Grant("read", "tickets.queue"),), 1)
        ).task

        def expired_on() -> list[str]:
            with opener.db.read() as conn:
                q = text("SELECT chain FROM audit_events WHERE type = 'task.expired' AND task_id = :t")
                return [r[0] for r in conn.execute(q, {"t": task.id})]

        _poll(expired_on, 120, "the reaper to expire the task")
        time.sleep(2.5)  # one more reaper interval: a second reaper would have run by now
        with opener.db.read() as conn:
            leader = conn.execute(text("SELECT holder FROM leader_leases")).scalar_one()
        assert leader in {"node-1-w0", "node-1-w1"}
        assert expired_on() == [leader]
        assert (state / "admin.sock").exists()


def _listening_sockets(port: int) -> int:
    """TCP sockets in LISTEN state on ``port`` (any address), from /proc/net/tcp."""
    listening = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        listening += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return listening


def test_each_worker_listens_on_its_own_socket_and_a_burst_is_spread(tmp_path: Path):
    """Each worker holds its own SO_REUSEPORT listener, so the kernel spreads connections:
    with one socket shared by the workers, the event loop that woke first took whole
    bursts of keep-alive connections and the other worker sat idle or served half as many
    (docs/architecture.md, "Several workers on one port"). Then 64 connections opened at
    once, one authorize each: both workers decide a fair share."""
    with _two_workers(tmp_path) as (_state, port, opener):
        _poll(lambda: _listening_sockets(port) == 2, 30, "a listener per worker")
        wl = Workload("spiffe://support.example/w", "support.example", "jwt-svid")
        opened = opener.broker.open_task(
            wl, OpenTaskRequest("support.triage", "w", (Grant("read", "tickets.queue"),), 600)
        )
        body = b'{"action": "read", "resource": "tickets.queue"}'
        request = (
            f"POST /v1/authorize HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {opened.token}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode() + body
        conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(64)]
        try:
            for c in conns:
                c.sendall(request)
            for c in conns:
                answer = b""
                while chunk := c.recv(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        finally:
            for c in conns:
                c.close()
        with opener.db.read() as conn:
            q = text(
                "SELECT chain, count(*) FROM audit_events"
                " WHERE type = 'decision' AND task_id = :t GROUP BY chain"
            )
            per_worker = dict(conn.execute(q, {"t": opened.task.id}).all())
        assert sum(per_worker.values()) == 64, per_worker
        # The kernel hashes each connection to a worker: fewer than 8 of 64 on one side
        # has odds below 1e-10 when the spread is fair.
        assert min(per_worker.get("node-1-w0", 0), per_worker.get("node-1-w1", 0)) >= 8, per_worker

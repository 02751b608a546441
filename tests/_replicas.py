"""Broker replicas as real processes on one PostgreSQL store, for the replica tests.

Each replica is a ``tether serve`` with its own state directory and loopback port, its
own ``node_id`` and the shared master key (``TETHER_MASTER_KEY``), as docs/operations.md
describes for several replicas; all of them trust one test trust domain.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tether.testing import TEST_STORE_TIMEOUT_MS, TestTrustDomain, prepare_state


@dataclass
class ReplicaProc:
    node_id: str
    state_dir: Path
    url: str
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    def start(self) -> None:
        tether = str(Path(sys.executable).parent / "tether")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [tether, "serve", "--state-dir", str(self.state_dir), "--listen", f"127.0.0.1:{self.port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.node_id} exited early: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"replica {self.node_id} did not become ready: {tail}")
            time.sleep(0.05)  # bounded poll for another process to bind its port

    def kill(self) -> None:
        """kill -9: no shutdown hook runs, nothing is released."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def replicas(
    root: Path,
    store_url: str,
    domain: TestTrustDomain,
    n: int,
    *,
    config_extra: str = "",
    prepare: Callable[[Path], None] | None = None,
    start: bool = True,
) -> Iterator[list[ReplicaProc]]:
    """``n`` replica processes (``rep-0``…), started and ready unless ``start`` is false
    (then call ``start()`` and ``wait_ready()`` on each); ``prepare`` edits each state
    directory first; all stopped on exit."""
    master = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    reps: list[ReplicaProc] = []
    for i in range(n):
        state = root / f"rep-{i}"
        prepare_state(state, domain, '\n[identity]\ndpop = "optional"\nworkload_socket = ""\n' + config_extra)
        if prepare is not None:
            prepare(state)
        env = {
            **os.environ,
            "TETHER_STORE": store_url,
            "TETHER_NODE_ID": f"rep-{i}",
            "TETHER_MASTER_KEY": master,
            "TETHER_LIMITS__STORE_TIMEOUT_MS": str(TEST_STORE_TIMEOUT_MS),
        }
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        reps.append(ReplicaProc(f"rep-{i}", state, url, env, port, log=root / f"rep-{i}.log"))
    try:
        if start:
            for r in reps:
                r.start()
            for r in reps:
                r.wait_ready()
        yield reps
    finally:
        for r in reps:
            r.stop()

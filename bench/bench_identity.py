"""Identity costs, each next to its raw floor in the same run (median and p99, microseconds).

    .venv/bin/python bench/bench_identity.py [--n 2000]

* svid.verify          SvidVerifier.verify of a JWT-SVID   vs  raw ES256 signature verify
* dpop.check (no store) proof checks without the replay write vs  raw ES256 signature verify
* dpop.replay insert   the store-shared jti insert (SQLite)  vs  a bare SQLite INSERT
* workload api fetch   SVID over the Unix socket, attested  vs  a bare Unix-socket round trip
* attest (pidfd)       SO_PEERCRED + pidfd + /proc exe       vs  SO_PEERCRED alone
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tether.identity import admin_ops, attestor
from tether.identity.dpop import DpopProof, DpopVerifier, ReplayCache, make_proof
from tether.runtime import Runtime
from tether.sdk import workload as workload_client
from tether.server.admin import Operator
from tether.testing import TestTrustDomain, make_settings


def measure(fn: Callable[[], object], n: int) -> tuple[float, float]:
    for _ in range(min(50, n)):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def row(name: str, result: tuple[float, float], floor: tuple[float, float]) -> None:
    print(
        f"{name:<34} median {result[0]:9.1f} µs  p99 {result[1]:9.1f} µs   "
        f"(floor median {floor[0]:8.1f} µs  p99 {floor[1]:8.1f} µs, x{result[0] / floor[0]:.1f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    tmp = Path(tempfile.mkdtemp())
    domain = TestTrustDomain("support.example")
    rt = Runtime.start(make_settings(tmp / "state", domain=domain))
    try:
        key = domain.key
        sig = key.sign(b"x" * 200, ec.ECDSA(hashes.SHA256()))
        pub = key.public_key()
        raw_verify = measure(lambda: pub.verify(sig, b"x" * 200, ec.ECDSA(hashes.SHA256())), n)

        svid = domain.svid("agent", rt.settings.broker_audience, ttl=3600)
        row("svid.verify", measure(lambda: rt.svids.verify(svid), n), raw_verify)

        dkey = ec.generate_private_key(ec.SECP256R1())
        checker = DpopVerifier(ReplayCache(rt.db), window_seconds=60, leeway_seconds=30, required=False)
        proof = DpopProof(
            make_proof(dkey, "POST", "http://x/v1/authorize", access_token="t"),
            "POST",
            "http://x/v1/authorize",
        )
        row("dpop.check (no store)", measure(lambda: checker._check(proof, "t"), n), raw_verify)

        conn = sqlite3.connect(tmp / "floor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE j (k TEXT PRIMARY KEY, e REAL)")
        counter = iter(range(10**9))
        raw_insert = measure(
            lambda: conn.execute("INSERT INTO j VALUES (?, ?)", (str(next(counter)), 1.0)), n
        )
        jtis = iter(range(10**9))
        row(
            "dpop.replay insert (sqlite)",
            measure(lambda: checker.replay.remember("jkt", str(next(jtis)), time.time() + 90), n),
            raw_insert,
        )

        admin_ops.register(
            rt,
            {"spiffe_id": "spiffe://tether.local/bench", "selectors": [f"unix:uid:{os.getuid()}"]},
            Operator(0, 1),
        )
        path = rt.workload_socket
        echo_path = tmp / "echo.sock"
        echo = socket.socket(socket.AF_UNIX)
        echo.bind(str(echo_path))
        echo.listen(16)

        def serve_echo() -> None:
            while True:
                try:
                    c, _ = echo.accept()
                except OSError:
                    return
                with c:
                    c.sendall(c.recv(4096))

        threading.Thread(target=serve_echo, daemon=True).start()

        def round_trip() -> None:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(echo_path))
                s.sendall(b'{"op":"x"}\n')
                s.recv(4096)

        fetches = max(50, n // 10)  # each one writes an audit event: keep the run short
        row(
            "workload api fetch (audited)",
            measure(lambda: workload_client.fetch_svid(path, audience="a"), fetches),
            measure(round_trip, fetches),
        )

        a, _b = socket.socketpair()
        row(
            "attest (pidfd + /proc, cached sha)",
            measure(lambda: attestor.attest(a), n),
            measure(lambda: attestor.peer_credentials(a), n),
        )
        echo.close()
    finally:
        rt.close()


if __name__ == "__main__":
    main()

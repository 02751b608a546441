"""More than one core: `POST /v1/authorize` throughput of `tether serve --workers N`.

The same state dir is served with ``--workers 1`` and then ``--workers 2``; a lean client
(pre-built request bytes on ``-c`` keep-alive connections, asyncio) sends authorize
requests for ``-t`` seconds (allow, with the ``jwt`` credential the example catalog gives
the ``tickets`` service). The client runs on the same cores as the broker, so keep it
cheap: its cost lowers both figures alike.

The store is SQLite, then (``--store both``, the default) a throwaway PostgreSQL server
(the test suite's ``tests/_pg.py``). On SQLite the workers take turns at the one write
lock; on PostgreSQL each worker is a replica with its own audit chain and they contend
only on row locks (docs/architecture.md, "Several workers on one SQLite file").

Run: ``python bench/bench_workers.py [-c 16] [-t 5] [--workers 2] [--store sqlite|postgresql|both]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _stats import emit

from tether.broker import OpenTaskRequest
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(state: Path, store_url: str | None) -> str:
    domain = TestTrustDomain("support.example")
    settings = make_settings(state, store_url=store_url, domain=domain, overrides={"environment": "prod"})
    (state / "tether.toml").write_text(
        (state / "tether.toml").read_text() + '\n[identity]\ndpop = "optional"\n'
    )
    taint = settings.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    rt = Runtime.start(settings)
    try:
        wl = Workload(domain.spiffe_id("bench"), domain.name, "jwt-svid")
        return rt.broker.open_task(
            wl, OpenTaskRequest("support.triage", "bench", (Grant("read", "tickets.queue"),), 3600)
        ).token
    finally:
        rt.close()


async def load(port: int, token: str, clients: int, seconds: float) -> float:
    body = json.dumps(
        {"action": "read", "resource": "tickets.queue", "arguments": {"ticket": "T-1"}}
    ).encode()
    request = (
        f"POST /v1/authorize HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    done = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                answer = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200") or b'"allow"' not in answer:
                    raise SystemExit(f"authorize failed: {head[:40]!r} {answer[:200]!r}")
                done += 1
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.monotonic() - t0)


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine since boot (/proc/stat)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_with(
    state: Path, store_url: str | None, token: str, workers: int, clients: int, seconds: float
) -> float:
    port = free_port()
    tether = str(Path(sys.executable).parent / "tether")
    command = [tether, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers)] + (["--store", store_url] if store_url else [])
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"--workers {workers} did not come up")
            time.sleep(0.1)
        time.sleep(1.0 if workers > 1 else 0.2)  # let every worker finish starting
        asyncio.run(load(port, token, clients, 0.5))  # warm-up
        busy0, total0 = _machine_busy()
        client0 = time.process_time()
        rate = asyncio.run(load(port, token, clients, seconds))
        busy1, total1 = _machine_busy()
        client = time.process_time() - client0
        # More workers can only help while a core is idle: say how busy the machine was and
        # how much of it the load generator itself took.
        cores = os.cpu_count() or 1
        machine = 100 * (busy1 - busy0) / (total1 - total0)
        print(
            f"  --workers {workers}: {rate:,.0f} req/s; machine {machine:.0f}% busy over {cores} cores, "
            f"the client alone {100 * client / seconds / cores:.0f}%"
        )
        return rate
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", type=int, default=16, help="concurrent keep-alive connections")
    ap.add_argument("-t", type=float, default=5.0, help="seconds of load per configuration")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    args = ap.parse_args()
    if args.store in ("sqlite", "both"):
        compare(args.workers, args.c, args.t, "sqlite", None)
    if args.store in ("postgresql", "both"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import _pg  # the test suite's throwaway server

        with _pg.running_server() as server:
            compare(
                args.workers,
                args.c,
                args.t,
                "postgresql",
                server.url(server.create_database("bench_workers")),
            )


def compare(workers: int, clients: int, seconds: float, store: str, store_url: str | None) -> None:
    state = Path(tempfile.mkdtemp(prefix="tether-bench-workers-")) / "state"
    token = prepare(state, store_url)
    one = run_with(state, store_url, token, 1, clients, seconds)
    many = run_with(state, store_url, token, workers, clients, seconds)
    label = "SQLite" if store == "sqlite" else "PostgreSQL"
    print(f"\nauthorize throughput over HTTP, {clients} connections, {seconds:.0f} s ({label})")
    print(f"{'--workers 1':20} {one:9.0f} req/s")
    print(f"{'--workers ' + str(workers):20} {many:9.0f} req/s")
    emit(
        "workers" if store == "sqlite" else "workers_pg",
        f"`tether serve --workers {workers}` authorize throughput ({label})",
        unit="req/s",
        p50=many,
        floor_p50=one,
        floor=f"--workers 1: {one:,.0f} req/s",
        ratio=f"{many / one:.2f}× one worker",
        target="≥ 1.7× one worker",
        met=many >= 1.7 * one,
    )


if __name__ == "__main__":
    main()

"""`POST /v1/authorize` over HTTP: what the HTTP layer adds to a decision.

A broker served as `tether serve` serves it (``tether.server.serve``, one process, SQLite)
in a child process; this client sends sequential keep-alive requests, alternating blocks
of ``GET /healthz`` (the HTTP round trip alone) and ``POST /v1/authorize`` (allow, no
credential). The cost of the decision over HTTP is authorize minus healthz; its floor is
the same decision in-process (``Broker.authorize``, measured here in the same run on a
state dir of its own).

Run: ``python bench/bench_http.py [-n 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _stats import emit, measure, summary, table

from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings

OVERRIDES = {"environment": "prod", "identity": {"dpop": "optional"}}
BODY = {"action": "read", "resource": "tickets.queue", "arguments": {"ticket": "T-1"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(state: Path, port: int) -> tuple[Runtime, str]:
    """A started runtime on a fresh state dir with one open task, and the task's token."""
    domain = TestTrustDomain("support.example")
    settings = make_settings(state, domain=domain, overrides={**OVERRIDES, "listen": f"127.0.0.1:{port}"})
    # The shipped burst rule (> 120 calls a minute) would turn a long run into denies.
    taint = settings.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    rt = Runtime.start(settings)
    wl = Workload(domain.spiffe_id("bench"), domain.name, "jwt-svid")
    opened = rt.broker.open_task(
        wl, OpenTaskRequest("support.triage", "bench", (Grant("read", "tickets.queue"),), 3600)
    )
    rt.broker.allow_hooks.clear()  # no credential: the decision and its audit event only
    return rt, opened.token


def serve_child(state: str, port: int) -> None:
    from tether.config import load_settings
    from tether.server.serve import serve

    over = {**OVERRIDES, "listen": f"127.0.0.1:{port}"}
    rt = Runtime.start(load_settings(Path(state), environ={}, overrides=over))
    rt.broker.allow_hooks.clear()
    try:
        asyncio.run(serve(rt))
    finally:
        rt.close()


def wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="requests per path")
    ap.add_argument("--serve", nargs=2, metavar=("STATE", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_child(args.serve[0], int(args.serve[1]))
        return

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-http-"))
    port = free_port()
    served, token = prepare(tmp / "served", port)
    served.close()
    local, local_token = prepare(tmp / "local", free_port())
    local_req = AuthorizeRequest("read", "tickets.queue", {"ticket": "T-1"})
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(tmp / "served"), str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        wait(base + "/healthz")
        health: list[float] = []
        authz: list[float] = []
        inproc: list[float] = []
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}) as c:

            def healthz() -> None:
                c.get("/healthz").raise_for_status()

            def authorize() -> None:
                r = c.post("/v1/authorize", json=BODY)
                if r.status_code != 200 or r.json().get("decision") != "allow":
                    raise SystemExit(f"authorize: {r.status_code} {r.text}")

            blocks = 5
            for i in range(blocks):  # alternate so that all three see the same load
                warm = 50 if i == 0 else 5
                health += measure(healthz, args.n // blocks, warm)
                authz += measure(authorize, args.n // blocks, warm)
                inproc += measure(
                    lambda: local.broker.authorize(local_token, local_req), args.n // blocks, warm
                )
        table(
            f"authorize over HTTP, sequential keep-alive, n={args.n}",
            [
                ("GET /healthz", health),
                ("POST /v1/authorize (allow, no credential)", authz),
                ("Broker.authorize in-process (floor)", inproc),
            ],
        )
        (h50, h99), (a50, a99), (i50, i99) = summary(health), summary(authz), summary(inproc)
        emit(
            "http_authorize",
            "`POST /v1/authorize` over HTTP, minus `/healthz` (keep-alive, sequential)",
            unit="µs",
            p50=a50 - h50,
            p99=a99 - h99,
            floor_p50=i50,
            floor_p99=i99,
            floor=f"in-process {i50:.0f} / {i99:.0f} µs (`/healthz` {h50:.0f} µs)",
            target="≤ 1.3× in-process",
            met=a50 - h50 <= 1.3 * i50,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        local.close()


if __name__ == "__main__":
    main()

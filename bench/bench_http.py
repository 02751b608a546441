"""`POST /v1/authorize` over HTTP: what the HTTP layer adds to a decision.

A broker served as `tether serve` serves it (``tether.server.serve``, one process, SQLite)
in a child process; this client sends sequential keep-alive requests, alternating blocks
of ``GET /healthz`` (the HTTP round trip alone) and ``POST /v1/authorize`` (allow, no
credential). The cost of the decision over HTTP is authorize minus healthz; its floor is
the same decision in-process (``Broker.authorize``, measured here in the same run on a
state dir of its own).

The client is a lean one (pre-built request bytes on one blocking keep-alive socket), so
the figure is what the server adds; the same blocks sent through ``httpx`` are printed
too, as what a typical Python client adds on top. The server's own CPU per request
(from ``/proc``) is printed beside each.

Run: ``python bench/bench_http.py [-n 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


class LeanClient:
    """Sequential HTTP/1.1 requests on one keep-alive socket: request bytes built once,
    the response read by its ``content-length`` (the broker never chunks)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw: bytes) -> tuple[bytes, bytes]:
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        while len(self.buf) < length:
            self.buf += self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        return head, body

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise SystemExit("the broker closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def raw_request(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n"
    if body:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    # 2,000: the difference of two medians settles only past a few hundred samples each.
    ap.add_argument("-n", type=int, default=2000, help="requests per path")
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
        lean = LeanClient(port)
        health_raw = raw_request("GET", "/healthz", token)
        authz_raw = raw_request("POST", "/v1/authorize", token, json.dumps(BODY).encode())

        def healthz() -> None:
            head, _ = lean.request(health_raw)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"healthz: {head[:60]!r}")

        def authorize() -> None:
            head, body = lean.request(authz_raw)
            if not head.startswith(b"HTTP/1.1 200") or b'"decision":"allow"' not in body:
                raise SystemExit(f"authorize: {head[:60]!r} {body[:200]!r}")

        c = httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"})

        def healthz_httpx() -> None:
            c.get("/healthz").raise_for_status()

        def authorize_httpx() -> None:
            r = c.post("/v1/authorize", json=BODY)
            if r.status_code != 200 or r.json().get("decision") != "allow":
                raise SystemExit(f"authorize: {r.status_code} {r.text}")

        paths = {
            "GET /healthz": healthz,
            "POST /v1/authorize (allow, no credential)": authorize,
            "GET /healthz (httpx client)": healthz_httpx,
            "POST /v1/authorize (httpx client)": authorize_httpx,
            "Broker.authorize in-process (floor)": lambda: local.broker.authorize(local_token, local_req),
        }
        samples: dict[str, list[float]] = {name: [] for name in paths}
        server_cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
        blocks = 5
        try:
            for i in range(blocks):  # alternate so that all see the same load
                warm = 50 if i == 0 else 5
                for name, fn in paths.items():
                    cpu0 = cpu_seconds(proc.pid)
                    samples[name] += measure(fn, args.n // blocks, warm)
                    server_cpu[name] += cpu_seconds(proc.pid) - cpu0
        finally:
            c.close()
            lean.close()
        table(f"authorize over HTTP, sequential keep-alive, n={args.n}", list(samples.items()))
        print(f"\n{'server CPU per request (/proc, incl. warm-up)':58} {'µs':>10}")
        for name in list(paths)[:4]:
            count = args.n // blocks * blocks + 50 + 5 * (blocks - 1)
            print(f"{name:58} {server_cpu[name] / count * 1e6:10.0f}")
        (h50, h99), (a50, a99) = summary(samples["GET /healthz"]), summary(samples[list(paths)[1]])
        (i50, i99) = summary(samples["Broker.authorize in-process (floor)"])
        (x50, _), (y50, _) = (
            summary(samples["GET /healthz (httpx client)"]),
            summary(samples["POST /v1/authorize (httpx client)"]),
        )
        print(
            f"\nauthorize minus healthz: lean client {a50 - h50:.0f} µs, httpx {y50 - x50:.0f} µs;"
            f" in-process {i50:.0f} µs"
        )
        emit(
            "http_authorize",
            "`POST /v1/authorize` over HTTP, minus `/healthz` (keep-alive, sequential)",
            unit="µs",
            p50=a50 - h50,
            p99=a99 - h99,
            floor_p50=i50,
            floor_p99=i99,
            floor=(
                f"in-process {i50:.0f} / {i99:.0f} µs (`/healthz` {h50:.0f} µs;"
                f" an httpx client adds {y50 - x50 - (a50 - h50):.0f} µs)"
            ),
            target="≤ 1.3× in-process",
            met=a50 - h50 <= 1.3 * i50,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        local.close()


if __name__ == "__main__":
    main()

"""MCP gateway over Streamable HTTP: a `tools/call` through the OAuth front door vs. with a
plain task token.

Two gateways in front of identical `mcp-server-time` upstreams (stdio subprocesses), served
by uvicorn on loopback, authorizing in-process against one SQLite broker. One is a plain
Tether enforcement point (task token, audience: the broker); the other an OAuth protected
resource (access token minted for its resource URI), which checks each request's token and
task with the broker before the MCP layer reads it. The client posts JSON-RPC `tools/call`
sequentially on one keep-alive connection per gateway, alternating blocks.

It also times the work the front door adds, in-process and without HTTP: the broker's
token-and-task check (``tether.gateway.service.check_token``), the figure that stays
readable on a loaded machine, where end-to-end HTTP latency is mostly waiting for a core.

Run: ``python bench/bench_oauth.py [-n 300] [--blocks 3]``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
from _stats import emit, measure, summary, table

from tether.broker import OpenTaskRequest
from tether.gateway import service
from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.mcp import McpGateway, Upstream
from tether.gateway.oauth_resource import ProtectedResource
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings

TIME = Upstream(command=[sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"])
CATALOG_EXTRA = (
    "\n  - {id: time, sensitivity: public, environment: prod, egress: internal, owner: team-platform}\n"
)
TOOLS_EXTRA = "  - {id: time.get_current_time, service: time}\n"
POLICY = """
@id("bench-oauth-time")
permit (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"time")
when { context.task.intent == "support.triage" };
"""
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "get_current_time", "arguments": {"timezone": "Europe/Paris"}},
}
HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp: Path) -> Runtime:
    domain = TestTrustDomain("support.example")
    s = make_settings(tmp / "state", domain=domain, overrides={"environment": "prod"})
    catalog = s.catalog_path.read_text()
    s.catalog_path.write_text(catalog.replace("\ntools:\n", CATALOG_EXTRA + "\ntools:\n" + TOOLS_EXTRA, 1))
    (s.policy_path / "50-oauth.cedar").write_text(POLICY)
    taint = s.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))  # no rate limit in a bench
    return Runtime.start(s)


def serve(
    rt: Runtime, ports: tuple[int, int], resource: str, stop: threading.Event, up: threading.Event
) -> None:
    plain = McpGateway("time", LocalAuthorizer(rt))
    oauth = McpGateway(
        "time", LocalAuthorizer(rt), resource=ProtectedResource(resource, ("http://127.0.0.1/",), "time")
    )

    async def main() -> None:
        async with plain.connect(TIME), oauth.connect(TIME):
            servers = [
                uvicorn.Server(uvicorn.Config(gw.http_app(), host="127.0.0.1", port=p, log_level="warning"))
                for gw, p in ((plain, ports[0]), (oauth, ports[1]))
            ]
            async with anyio.create_task_group() as tg:
                for srv in servers:
                    tg.start_soon(srv.serve)
                while not all(srv.started for srv in servers):
                    await anyio.sleep(0.01)
                up.set()
                while not stop.is_set():
                    await anyio.sleep(0.05)
                for srv in servers:
                    srv.should_exit = True

    anyio.run(main)


def timed(client: httpx.Client, url: str, token: str, n: int) -> list[float]:
    headers = {**HEADERS, "authorization": f"Bearer {token}"}
    out = []
    for i in range(n + 20):
        t0 = time.perf_counter_ns()
        r = client.post(url, json=CALL, headers=headers)
        elapsed = (time.perf_counter_ns() - t0) / 1000
        if r.status_code != 200 or '"isError":true' in r.text:
            raise SystemExit(f"the call was refused: {r.status_code} {r.text[:300]}")
        if i >= 20:  # warm-up
            out.append(elapsed)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--blocks", type=int, default=3)
    args = ap.parse_args()
    rt = start(Path(tempfile.mkdtemp(prefix="tether-bench-oauth-")))
    ports = (free_port(), free_port())
    plain_url, oauth_url = (f"http://127.0.0.1:{p}/mcp" for p in ports)
    stop, up = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(rt, ports, oauth_url, stop, up), daemon=True)
    thread.start()
    try:
        if not up.wait(60):
            raise SystemExit("the gateways did not start")
        wl = Workload(TestTrustDomain("support.example").spiffe_id("bench"), "support.example", "jwt-svid")
        opened = rt.broker.open_task(
            wl, OpenTaskRequest("support.triage", "bench", (Grant("tool:call", "time"),), 3600)
        )
        access = rt.broker.tokens.mint(opened.task, now=time.time(), audience=oauth_url)
        check = measure(lambda: service.check_token(rt, access, oauth_url), args.n)
        plain: list[float] = []
        oauth: list[float] = []
        with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
            for _ in range(args.blocks):  # alternate, so both see the same load
                plain += timed(a, plain_url, opened.token, args.n // args.blocks)
                oauth += timed(b, oauth_url, access, args.n // args.blocks)
    finally:
        stop.set()
        thread.join(timeout=30)
        rt.close()
    table(
        f"MCP tools/call over Streamable HTTP, sequential, n={args.n}",
        [
            ("task token (plain gateway)", plain),
            ("OAuth access token (protected resource)", oauth),
            ("  the front door's own check, in-process (no HTTP)", check),
        ],
    )
    (p50, p99), (o50, o99) = summary(plain), summary(oauth)
    emit(
        "mcp_oauth",
        "MCP `tools/call` through the OAuth front door, added over a task-token call",
        unit="µs",
        p50=o50 - p50,
        p99=o99 - p99,
        floor_p50=p50,
        floor_p99=p99,
        floor=f"task-token call {p50 / 1000:.2f} / {p99 / 1000:.2f} ms",
        ratio=f"{o50 / p50:.2f}× task-token call",
        target="≤ +1 ms p50",
        met=o50 - p50 <= 1000,
    )


if __name__ == "__main__":
    main()

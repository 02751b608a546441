"""MCP gateway `tools/call`: what the gateway adds over calling the same upstream directly.

The upstream is a real MCP server (`mcp-server-time`, stdio subprocess). Direct: an
`mcp` ClientSession on its stdio. Through the gateway: a ClientSession talking to the
gateway's MCP server (in memory, as an agent framework embedding it would), which
authorizes in-process (SQLite: decision + audit commit + call record) and forwards on its
own stdio session to an identical upstream. Both call `get_current_time` sequentially,
in alternating blocks. Besides wall time it prints the CPU time this process spends per
call (the gateway, its broker and the agent's session all run here; each upstream is its
own process), which a loaded machine disturbs much less than wall time.

``--hops`` also stamps each hop of a call through the gateway (monotonic clock) and prints
their medians: agent → gateway (the agent's request until the gateway's handler runs),
before the decision, the decision, decision → upstream write, the upstream round trip
(write to answer), answer → call record, the call record, and the response back to the
agent — next to the direct call, whose round trip the upstream hop should match.

A third path, alternating with the other two, is the same gateway answering every call
with the verdict of one real decision (``DecidedOnce``): the CPU line splits what the
gateway adds into the decision as it costs inside a call (gateway minus that path) and the
rest (that path minus direct: relaying, validation, shaping and the call record, whose cost
alone is timed after the calls). A decision timed on its own, back to back, is cheaper
than inside a call, where the upstream's and the agent's work run between two of them.

Run: ``python bench/bench_mcp.py [-n 300] [--hops]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.memory import create_client_server_memory_streams

sys.path.insert(0, str(Path(__file__).parent))
from _stats import emit, summary, table

from tether.audit import event as ev
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.gateway.authorizer import LocalAuthorizer, Verdict
from tether.gateway.mcp import McpGateway, Upstream
from tether.identity.dpop import DpopProof
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings

if TYPE_CHECKING:
    from tether.gateway.mcp_relay import Relay

COMMAND = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
ARGS = {"timezone": "Europe/Paris"}
CATALOG_EXTRA = (
    "\n  - {id: time, sensitivity: public, environment: prod, egress: internal, owner: team-platform}\n"
)
TOOLS_EXTRA = "  - {id: time.get_current_time, service: time}\n"
POLICY = """
@id("bench-mcp-time")
permit (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"time")
when { context.task.intent == "support.triage" };
"""


def start(tmp: Path) -> tuple[Runtime, str]:
    domain = TestTrustDomain("support.example")
    s = make_settings(tmp / "state", domain=domain, overrides={"environment": "prod"})
    catalog = s.catalog_path.read_text()
    s.catalog_path.write_text(catalog.replace("\ntools:\n", CATALOG_EXTRA + "\ntools:\n" + TOOLS_EXTRA, 1))
    (s.policy_path / "50-mcp.cedar").write_text(POLICY)
    taint = s.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    rt = Runtime.start(s)
    wl = Workload(domain.spiffe_id("bench"), domain.name, "jwt-svid")
    token = rt.broker.open_task(
        wl, OpenTaskRequest("support.triage", "bench", (Grant("tool:call", "time.get_current_time"),), 3600)
    ).token
    return rt, token


async def timed(call: Callable[[], Awaitable[object]], n: int, cpu: list[float]) -> list[float]:
    """Wall time per call (µs); appends this block's CPU time per call (µs) to ``cpu``."""
    for _ in range(30):
        await call()
    out = []
    c0 = time.process_time_ns()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        out.append((time.perf_counter_ns() - t0) / 1000)
    cpu.append((time.process_time_ns() - c0) / 1000 / n)
    return out


HOPS = (
    ("agent → gateway handler", "t0", "h0"),
    ("handler → decision", "h0", "a0"),
    ("decision", "a0", "a1"),
    ("decision → upstream write", "a1", "u0"),
    ("upstream round trip", "u0", "u1"),
    ("answer → call record", "u1", "r0"),
    ("call record", "r0", "r1"),
    ("record → handler return", "r1", "h1"),
    ("response → agent", "h1", "t1"),
)


class Hops:
    """Monotonic stamps around the gateway's steps, by wrapping them (``--hops`` only)."""

    def __init__(self, gateway: McpGateway, relay: Relay) -> None:
        self.stamps: dict[str, int] = {}
        self.rows: dict[str, list[float]] = {name: [] for name, _, _ in HOPS}
        self._wrap(gateway, "handle_call", "h")
        self._wrap(gateway.authorizer, "authorize", "a")
        self._wrap(gateway.authorizer, "record", "r")
        self._wrap(relay, "call", "u")

    def _wrap(self, obj: object, name: str, key: str) -> None:
        inner = getattr(obj, name)

        async def timed_step(*args: object, **kwargs: object) -> object:
            self.stamps[key + "0"] = time.perf_counter_ns()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.stamps[key + "1"] = time.perf_counter_ns()

        setattr(obj, name, timed_step)

    def take(self) -> None:
        s = self.stamps
        for name, start, end in HOPS:
            self.rows[name].append((s[end] - s[start]) / 1000)


class DecidedOnce(LocalAuthorizer):
    """The same in-process authorizer, answering every call with the verdict of its first
    real decision: the gateway's path with the decision's cost taken out (bench only)."""

    verdict: Verdict | None = None

    async def authorize(self, token: str, req: AuthorizeRequest, proof: DpopProof | None = None) -> Verdict:
        if self.verdict is None:
            self.verdict = await super().authorize(token, req, proof)
        return self.verdict


async def record_alone(authorizer: LocalAuthorizer, verdict: Verdict, n: int) -> float:
    """CPU per call (µs) of one ``call.forwarded`` record (a group commit of one)."""
    payload = {"gateway": "mcp", "server": "time", "tool": "get_current_time", "outcome": "ok"}

    async def record() -> None:
        await authorizer.record(ev.CALL_FORWARDED, verdict, payload)

    cpu: list[float] = []
    await timed(record, n, cpu)
    return cpu[0]


@contextlib.asynccontextmanager
async def agent_of(gateway: McpGateway) -> AsyncIterator[ClientSession]:
    """A stock ``ClientSession`` talking to ``gateway``'s MCP server in memory."""
    app = gateway.server()
    async with create_client_server_memory_streams() as (client, srv), anyio.create_task_group() as tg:
        tg.start_soon(app.run, srv[0], srv[1], app.create_initialization_options())
        async with ClientSession(client[0], client[1]) as session:
            await session.initialize()
            yield session
        tg.cancel_scope.cancel()


class Rows:
    """Wall times (µs) and per-block CPU per call (µs) of one path."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []


async def run(
    rt: Runtime, token: str, n: int, blocks: int = 3, hops: bool = False
) -> tuple[dict[str, Rows], Hops | None, float]:
    rows = {path: Rows() for path in ("direct", "gateway", "decided once")}
    gateway = McpGateway("time", LocalAuthorizer(rt), task_token=token)
    stored = DecidedOnce(rt)
    held = McpGateway("time", stored, task_token=token)
    params = StdioServerParameters(command=COMMAND[0], args=COMMAND[1:])
    async with (
        stdio_client(params) as (r, w),
        ClientSession(r, w) as plain,
        gateway.connect(Upstream(command=COMMAND)),
        held.connect(Upstream(command=COMMAND)),
        agent_of(gateway) as session,
        agent_of(held) as held_session,
    ):
        await plain.initialize()
        relay = getattr(gateway, "_relay", None)
        stamps = Hops(gateway, relay) if hops and relay is not None else None

        async def via_gateway() -> object:
            if stamps is not None:
                stamps.stamps["t0"] = time.perf_counter_ns()
            result = await session.call_tool("get_current_time", ARGS)
            if result.is_error:
                raise SystemExit(f"gateway refused the call: {result}")
            if stamps is not None:
                stamps.stamps["t1"] = time.perf_counter_ns()
                stamps.take()
            return result

        async def via_held() -> object:
            result = await held_session.call_tool("get_current_time", ARGS)
            if result.is_error:
                raise SystemExit(f"gateway refused the call: {result}")
            return result

        paths = {
            "direct": lambda: plain.call_tool("get_current_time", ARGS),
            "gateway": via_gateway,
            "decided once": via_held,
        }
        for _ in range(blocks):  # alternate, so all see the same load
            for path, call in paths.items():
                rows[path].wall += await timed(call, n // blocks, rows[path].cpu)
        assert stored.verdict is not None
        record = await record_alone(stored, stored.verdict, n)
    return rows, stamps, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks of each path")
    ap.add_argument("--hops", action="store_true", help="print the median of each hop of a call")
    args = ap.parse_args()
    rt, token = start(Path(tempfile.mkdtemp(prefix="tether-bench-mcp-")))
    try:
        rows, hops, record = anyio.run(run, rt, token, args.n, args.blocks, args.hops)
    finally:
        rt.close()
    direct, through = rows["direct"].wall, rows["gateway"].wall
    if hops is not None:
        table(
            "hops of a call through the gateway",
            [("direct call (for the upstream round trip)", direct)]
            + [(f"  {k}", v) for k, v in hops.rows.items()],
        )
    table(
        f"MCP tools/call, sequential, n={args.n}",
        [
            ("upstream directly (stdio)", direct),
            ("through the MCP gateway (in-process broker)", through),
            ("  the same, answering with one stored verdict", rows["decided once"].wall),
        ],
    )
    dc, gc, hc = (statistics.median(rows[p].cpu) for p in ("direct", "gateway", "decided once"))
    print(
        f"CPU time of this process per call: direct {dc:.0f} µs, through the gateway {gc:.0f} µs "
        f"(+{gc - dc:.0f} µs); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"  of the +{gc - dc:.0f} µs: the decision {gc - hc:.0f} µs (the gateway minus the same gateway "
        f"answering with a stored verdict), the rest {hc - dc:.0f} µs, of which the call record alone "
        f"{record:.0f} µs"
    )
    (d50, d99), (g50, g99) = summary(direct), summary(through)
    emit(
        "mcp_gateway",
        "MCP gateway `tools/call`, added over calling the upstream directly",
        unit="µs",
        p50=g50 - d50,
        p99=g99 - d99,
        floor_p50=d50,
        floor_p99=d99,
        floor=f"direct call {d50 / 1000:.2f} / {d99 / 1000:.2f} ms",
        ratio=f"{g50 / d50:.2f}× direct",
        target="≤ +1.5 ms p50",
        met=g50 - d50 <= 1500,
    )


if __name__ == "__main__":
    main()

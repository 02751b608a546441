"""HTTP gateway overhead: latency added over calling the upstream directly, and throughput.

Processes on loopback: a trivial upstream (uvicorn, one worker), the gateway (uvicorn,
one worker, authorizing in-process against a SQLite broker store, each call a decision +
credential + audit commit + call record), the same gateway whose broker mints no
credential (the decision, its audit commit and the call record: what the gateway costs
beside the connector's mint), the proxy-only stub, and this client. Latency is
sequential requests on one keep-alive connection (p50/p99); throughput is ``-c``
concurrent keep-alive clients for ``-t`` seconds. Each row also gives the CPU time its
server process spent per request during the throughput run (``/proc``): on a machine
shared with other work, wall times also count the wait for a core, CPU time does not.

Run: ``python bench/bench_gateway.py [-n 2000] [-c 16] [-t 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _stats import emit, summary

UPSTREAM = """
import sys, uvicorn
BODY = b'{"ok":true}'
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


# Plain bearer task tokens (DPoP would add a proof per request on both sides).
OVERRIDES = {"environment": "prod", "identity": {"dpop": "optional"}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


class AllowAll:
    """Stands in for the broker to isolate the proxy's own cost (never used outside this bench)."""

    async def authorize(self, token, req, proof=None):
        from tether.gateway.authorizer import Verdict

        return Verdict(
            {"decision": "allow", "decision_id": "dec_bench"}, for_agent={"kind": "jwt", "token": "bench"}
        )

    async def record(self, type_, verdict, payload, trace_id=None, *, after_reply=False):
        return None

    async def aclose(self):
        return None


def serve_gateway(state: str, port: int, upstream: str, mode: str = "broker") -> None:
    """Child process: the gateway with an in-process broker on the prepared state dir
    (``state == "-"``: with the allow-all stand-in, for the proxy's own overhead;
    ``mode == "no-credential"``: the broker's allow hooks cleared, so an allow mints
    nothing, as ``bench_authorize.py`` measures the core on its own)."""
    import tomllib

    import uvicorn

    from tether.config import load_settings
    from tether.gateway.authorizer import LocalAuthorizer
    from tether.gateway.http import HttpGateway
    from tether.gateway.routes import parse_routes
    from tether.runtime import Runtime

    try:
        from tether.server.http_protocol import uvicorn_options
    except ImportError:  # an older tree (for before/after figures): its own settings

        def uvicorn_options(max_header_bytes: int) -> dict[str, object]:
            return {"http": "h11", "loop": "asyncio"}

    table = parse_routes(
        tomllib.loads(
            f'[[routes]]\nprefix = "/t"\nupstream = "{upstream}"\nservice = "tickets"\n'
            '[[routes.rules]]\nmethod = "GET"\npath = "/queue"\naction = "http:read"\n'
            'resource = "tickets.queue"\n'
        )
    )
    if state == "-":
        authorizer: object = AllowAll()
    else:
        settings = load_settings(Path(state), environ={}, overrides=OVERRIDES)
        rt = Runtime.start(settings)
        if mode == "no-credential":
            rt.broker.allow_hooks.clear()
        authorizer = LocalAuthorizer(rt)
    # Served as `tether gateway http` serves it: the same parser and its bound.
    uvicorn.run(
        HttpGateway(table, authorizer),
        host="127.0.0.1",
        port=port,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        **uvicorn_options(16 * 1024),
    )


def prepare(tmp: Path) -> tuple[str, str]:
    """A state dir with the example catalog/policies and one open task; its token."""
    from tether.broker import OpenTaskRequest
    from tether.model import Grant, Workload
    from tether.runtime import Runtime
    from tether.testing import TestTrustDomain, make_settings

    domain = TestTrustDomain("support.example")
    settings = make_settings(tmp / "state", domain=domain, overrides=OVERRIDES)
    # The shipped burst rule (> 120 calls a minute) would turn a long run into denies.
    taint = settings.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    rt = Runtime.start(settings)
    try:
        wl = Workload(domain.spiffe_id("bench"), domain.name, "jwt-svid")
        opened = rt.broker.open_task(
            wl, OpenTaskRequest("support.triage", "bench", (Grant("http:read", "tickets.queue"),), 3600)
        )
        return str(settings.state_dir), opened.token
    finally:
        rt.close()


def latency(url: str, headers: dict[str, str], n: int) -> list[float]:
    with httpx.Client(headers=headers) as c:
        for _ in range(50):
            c.get(url).raise_for_status()
        out = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            r = c.get(url)
            out.append((time.perf_counter_ns() - t0) / 1000)
            if r.status_code != 200:
                raise SystemExit(f"{url}: {r.status_code} {r.text}")
        return out


async def throughput(url: str, headers: dict[str, str], clients: int, seconds: float) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        async with httpx.AsyncClient(headers=headers) as c:
            while time.monotonic() < stop:
                (await c.get(url)).raise_for_status()
                done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return done / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=500, help="sequential requests for latency")
    ap.add_argument("-c", type=int, default=16, help="concurrent clients for throughput")
    ap.add_argument("-t", type=float, default=3.0, help="seconds of throughput load")
    ap.add_argument(
        "--serve-gateway", nargs=4, metavar=("STATE", "PORT", "UPSTREAM", "MODE"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.serve_gateway:
        state, port, upstream, mode = args.serve_gateway
        serve_gateway(state, int(port), upstream, mode)
        return

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-gw-"))
    state, token = prepare(tmp)
    bare_state, bare_token = prepare(tmp / "no-credential")  # a store (and audit chain) of its own
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    procs = [subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)])]
    paths = [("upstream direct", upstream + "/queue", token)]
    for name, state_arg, mode, tok in (
        ("gateway, proxy only (allow-all stub)", "-", "stub", token),
        ("gateway, in-process broker", state, "broker", token),
        ("  … its broker minting no credential", bare_state, "no-credential", bare_token),
    ):
        port = free_port()
        argv = [sys.executable, __file__, "--serve-gateway", state_arg, str(port), upstream, mode]
        procs.append(subprocess.Popen(argv))
        paths.append((name, f"http://127.0.0.1:{port}/t/queue", tok))
    servers = [p.pid for p in procs]  # the process answering each path
    try:
        for _, url, _tok in paths:
            wait(url)
        stats = [summary(latency(url, {"Authorization": f"Bearer {tok}"}, args.n)) for _, url, tok in paths]
        print(f"\nlatency, sequential keep-alive, n={args.n} (µs)")
        print(f"{'path':40} {'p50':>9} {'p99':>9} {'+p50':>9} {'+p99':>9}")
        for (name, _, _), (p50, p99) in zip(paths, stats, strict=True):
            print(f"{name:40} {p50:9.0f} {p99:9.0f} {p50 - stats[0][0]:9.0f} {p99 - stats[0][1]:9.0f}")
        print(f"\nthroughput, {args.c} concurrent clients, {args.t:.0f} s, one worker each")
        print(f"{'path':40} {'req/s':>9} {'server CPU µs/req':>18}")
        rates, cpus = [], []
        for (name, url, tok), pid in zip(paths, servers, strict=True):
            c0, t0 = cpu_seconds(pid), time.monotonic()
            rates.append(asyncio.run(throughput(url, {"Authorization": f"Bearer {tok}"}, args.c, args.t)))
            done = rates[-1] * (time.monotonic() - t0)
            cpus.append((cpu_seconds(pid) - c0) * 1e6 / max(done, 1))
            print(f"{name:40} {rates[-1]:9.0f} {cpus[-1]:18.0f}")
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        (d50, d99), (s50, s99), (g50, g99), (n50, n99) = stats
        emit(
            "gateway_latency",
            "HTTP gateway with in-process broker, added over direct",
            unit="µs",
            p50=g50 - d50,
            p99=g99 - d99,
            floor_p50=s50 - d50,
            floor_p99=s99 - d99,
            floor=(
                f"proxy-only stub: +{(s50 - d50) / 1000:.2f} / +{(s99 - d99) / 1000:.2f} ms; "
                f"no credential minted: +{(n50 - d50) / 1000:.2f} / +{(n99 - d99) / 1000:.2f} ms"
            ),
            target="≤ +1 ms p50, ≤ +3 ms p99",
            met=g50 - d50 <= 1000 and g99 - d99 <= 3000,
        )
        emit(
            "gateway_throughput",
            f"HTTP gateway throughput, {args.c} clients, one worker",
            unit="req/s",
            p50=rates[2],
            floor_p50=rates[1],
            floor=(
                f"proxy-only stub {rates[1]:,.0f} req/s; direct {rates[0]:,.0f} req/s; "
                f"no credential minted {rates[3]:,.0f} req/s; "
                f"server CPU/req {cpus[2]:,.0f} µs (stub {cpus[1]:,.0f}, no credential {cpus[3]:,.0f})"
            ),
            ratio=f"{rates[2] / rates[1]:.2f}× stub",
            target="≥ 1,000 req/s, ≥ 0.8× stub",
            met=rates[2] >= 1000 and rates[2] >= 0.8 * rates[1],
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()

"""docs/gateways.md's walkthrough with real processes: a fresh `tether init` (prod, DPoP
required), the shipped MCP example catalog and policy, the gateway registered as a
workload and listed in `[gateway] enforcers`, `tether up`; then an MCP Python SDK client
launches `tether gateway mcp --intent … --scope …` over stdio exactly as a desktop client's
config does, in front of the official filesystem server. No token is handed in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import mcp_types as types
import pytest
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "gateway" / "mcp"
FS_SERVER = REPO / ".node" / "node_modules" / ".bin" / "mcp-server-filesystem"
TETHER = str(Path(sys.executable).parent / "tether")
GATEWAY_ID = "spiffe://support.example/gateways/fs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tether(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TETHER, *args], capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """State dir, data dir (the example's `/data`, moved under tmp) and the broker URL."""
    data = (tmp_path / "data").resolve()
    (data / "public").mkdir(parents=True)
    (data / "secret").mkdir()
    (data / "public" / "readme.txt").write_text("hello from public\n")
    (data / "secret" / "key.txt").write_text("TOPSECRET\n")
    (data / "public" / "link.txt").symlink_to(data / "secret" / "key.txt")
    state = tmp_path / "state"
    tether("init", "--state-dir", str(state))
    catalog = yaml.safe_load((state / "catalog.yaml").read_text())
    snippet = yaml.safe_load((EXAMPLES / "catalog-snippet.yaml").read_text().replace("/data", str(data)))
    for key in ("services", "tools"):
        catalog[key] += snippet[key]
    (state / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    policy = (EXAMPLES / "50-mcp.cedar").read_text().replace("/data/public", f"{data}/public")
    (state / "policies" / "50-mcp.cedar").write_text(policy)
    with (state / "tether.toml").open("a") as f:
        f.write(f'\n[gateway]\nenforcers = ["{GATEWAY_ID}"]\n')
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [TETHER, "up", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded poll: another process binds its port
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "broker did not become ready"
            time.sleep(0.05)
        python = os.path.realpath(sys.executable)  # what the kernel shows for `tether …`
        tether(
            "workload", "register", GATEWAY_ID, "--state-dir", str(state),
            "--selector", f"unix:uid:{os.getuid()}", "--selector", f"unix:path:{python}",
        )  # fmt: skip
        yield state, data, base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_stock_stdio_client_session(stack: tuple[Path, Path, str]) -> None:
    """The client sends no token: reads under public work, attacks are refused, the task closes."""
    state, data, base = stack
    assert FS_SERVER.exists(), "run `make mcp-servers` first"
    params = StdioServerParameters(
        command=TETHER,
        args=[
            "gateway", "mcp", "--state-dir", str(state), "--broker", base, "--server", "fs",
            "--intent", "support.triage", "--scope", "tool:call=fs",
            "--upstream-cmd", f"{FS_SERVER} {data}",
        ],
        env={**os.environ},
    )  # fmt: skip

    async def go() -> tuple[list[str], list[types.CallToolResult]]:
        with anyio.fail_after(60):
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                listed = sorted(t.name for t in (await session.list_tools()).tools)
                results = [
                    await session.call_tool("read_text_file", {"path": f"{data}/public/readme.txt"}),
                    await session.call_tool("read_text_file", {"path": f"{data}/public/../secret/key.txt"}),
                    await session.call_tool("read_text_file", {"path": f"{data}/public/link.txt"}),
                    await session.call_tool(
                        "read_multiple_files",
                        {"paths": [f"{data}/public/readme.txt", f"{data}/secret/key.txt"]},
                    ),
                ]
                return listed, results

    listed, (ok, dotdot, link, packed) = anyio.run(go)
    assert listed == ["list_directory", "read_multiple_files", "read_text_file"]  # write_file: no permit
    assert not ok.is_error and "hello from public" in text(ok)
    for refused in (dotdot, link, packed):
        assert refused.is_error and "TOPSECRET" not in text(refused)
        assert "mcp-fs-public-only" in text(refused)
    tasks = json.loads(tether("task", "list", "--state-dir", str(state), "--json").stdout)
    mine = [t for t in tasks if t.get("agent") == GATEWAY_ID]
    assert len(mine) == 1 and mine[0]["state"] == "closed"  # closed when the client went away

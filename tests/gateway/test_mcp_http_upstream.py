"""A Streamable HTTP upstream receives a per-call credential minted for the task
(the `jwt` connector of its catalog service), never the agent's task token. Real MCP
client, gateway, and an HTTP MCP server process (`headers_mcp_server.py`)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.mcp import McpGateway, Upstream

from .conftest import free_port, wait_http

HERE = Path(__file__).parent
SERVICE = "\n  - {id: hdr, sensitivity: internal, environment: prod, egress: internal, connector: jwt}\n"
POLICY = '@id("h")\npermit (principal, action, resource in Tether::Service::"hdr");\n'


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """This test spawns a real server process; it runs on SQLite."""
    return sqlite_url


@pytest.fixture
def settings(settings: Any) -> Any:
    catalog = settings.catalog_path.read_text()
    catalog = catalog.replace("\ntools:\n", SERVICE + "\ntools:\n  - {id: hdr.whoami, service: hdr}\n", 1)
    settings.catalog_path.write_text(catalog)
    (settings.policy_path / "50-hdr.cedar").write_text(POLICY)
    return settings


@pytest.fixture
def http_upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "headers_mcp_server.py"), str(port)])
    try:
        with contextlib.suppress(Exception):
            wait_http(f"http://127.0.0.1:{port}/mcp")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_http_upstream_gets_per_call_credential_not_agent_token(
    runtime: Any, agent: Any, credentials: str, http_upstream: str
) -> None:
    """Each call carries a fresh bearer minted for this task's service; the task token never."""
    r = agent.open([{"action": "tool:call", "resource": "hdr"}])
    assert r.status_code == 201, r.text
    token = r.json()["task_token"]
    gateway = McpGateway("hdr", LocalAuthorizer(runtime), task_token=token)

    async def go() -> list[types.CallToolResult]:
        with anyio.fail_after(60):
            async with gateway.connect(Upstream(url=http_upstream)):
                app = gateway.server()
                async with (
                    create_client_server_memory_streams() as (client, srv),
                    anyio.create_task_group() as tg,
                ):
                    tg.start_soon(app.run, srv[0], srv[1], app.create_initialization_options())
                    async with ClientSession(client[0], client[1]) as s:
                        await s.initialize()
                        out = [await s.call_tool("whoami", {}) for _ in range(2)]
                    tg.cancel_scope.cancel()
                return out

    first, second = anyio.run(go)
    seen = [c.content[0].text for c in (first, second)]
    assert not first.is_error and not second.is_error
    assert all(s.startswith("Bearer ") for s in seen)
    assert token not in "".join(seen)
    if credentials == "real":
        assert seen[0] != seen[1]  # one credential per call

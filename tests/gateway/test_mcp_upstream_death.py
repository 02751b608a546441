"""A stdio upstream that dies: the gateway restarts it a bounded number of times, then
gives up with `UpstreamGone` (the CLI exits non-zero), logging why. Real MCP client,
real subprocess server (`crashy_mcp_server.py`), in-process broker."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.mcp import McpGateway, Upstream, UpstreamGone
from tether.testing import make_settings

HERE = Path(__file__).parent
POLICY = (
    '@id("c")\npermit (principal, action == Tether::Action::"tool:call", '
    'resource in Tether::Service::"crashy");\n'
)


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """These tests spawn real server processes; they run on SQLite."""
    return sqlite_url


@pytest.fixture
def settings(tmp_path: Path, store_url: str, domain: Any) -> Any:
    s = make_settings(
        tmp_path / "state",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod"},
        config_extra='\n[identity]\ndpop = "optional"\n',
    )
    service = "\n  - {id: crashy, sensitivity: public, environment: prod, egress: internal}\n"
    tools = "  - {id: crashy.echo, service: crashy}\n  - {id: crashy.die, service: crashy}\n"
    s.catalog_path.write_text(
        s.catalog_path.read_text().replace("\ntools:\n", service + "\ntools:\n" + tools, 1)
    )
    (s.policy_path / "50-crashy.cedar").write_text(POLICY)
    return s


@contextlib.asynccontextmanager
async def session(gateway: McpGateway, starts: Path) -> AsyncIterator[ClientSession]:
    upstream = Upstream(command=[sys.executable, str(HERE / "crashy_mcp_server.py"), str(starts)])
    async with gateway.connect(upstream):
        app = gateway.server()
        async with create_client_server_memory_streams() as (client, srv), anyio.create_task_group() as tg:
            tg.start_soon(app.run, srv[0], srv[1], app.create_initialization_options())
            async with ClientSession(client[0], client[1]) as s:
                await s.initialize()
                yield s
            tg.cancel_scope.cancel()


def token(agent: Any) -> str:
    r = agent.open([{"action": "tool:call", "resource": "crashy"}])
    assert r.status_code == 201, r.text
    return str(r.json()["task_token"])


def code(result: types.CallToolResult) -> str:
    return str(((result.meta or {}).get("tether") or {}).get("code"))


def test_dead_stdio_upstream_is_restarted(runtime: Any, agent: Any, tmp_path: Path) -> None:
    """After the server dies mid-call the next call reaches a fresh server process."""
    starts = tmp_path / "starts"
    gateway = McpGateway("crashy", LocalAuthorizer(runtime), task_token=token(agent), backoff=0.05)

    async def go() -> tuple[types.CallToolResult, types.CallToolResult]:
        with anyio.fail_after(60):
            async with session(gateway, starts) as s:
                died = await s.call_tool("die", {})
                return died, await s.call_tool("echo", {"text": "still here"})

    died, after = anyio.run(go)
    assert died.is_error and code(died) == "upstream_unavailable"
    assert not after.is_error and "still here" in after.content[0].text
    assert len(starts.read_text().split()) == 2


def test_upstream_that_keeps_dying_makes_the_gateway_give_up(
    runtime: Any, agent: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past `max_restarts` the gateway ends with UpstreamGone and logs each death."""
    starts = tmp_path / "starts"
    gateway = McpGateway(
        "crashy", LocalAuthorizer(runtime), task_token=token(agent), backoff=0.05, max_restarts=1
    )

    async def go() -> None:
        with anyio.fail_after(60):
            async with session(gateway, starts) as s:
                await s.call_tool("die", {})
                await s.call_tool("die", {})  # the restarted one dies too: no restarts left
                await anyio.sleep_forever()  # the gateway itself must end this

    with caplog.at_level(logging.ERROR, "tether.gateway.mcp"), pytest.raises(BaseException) as info:
        anyio.run(go)
    gone = info.value
    if isinstance(gone, BaseExceptionGroup):
        gone = gone.subgroup(UpstreamGone)
        while isinstance(gone, BaseExceptionGroup):
            gone = gone.exceptions[0]
    assert isinstance(gone, UpstreamGone) and gone.code == "upstream_gone"
    assert sum("is gone" in r.message for r in caplog.records) == 2
    assert len(starts.read_text().split()) == 2

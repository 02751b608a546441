"""The gateway's own identity and the stdio session task: a remote MCP gateway (real
`mcp-server-time`, real MCP client) talking to a real broker app over ASGI.

The SVID source here mints short-lived JWT-SVIDs from the test trust domain: it stands in
for the local Workload API, whose shortest SVID lifetime (30 s) would make these tests slow.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from tether.audit.chain import capture_events
from tether.gateway.authorizer import RemoteAuthorizer
from tether.gateway.identity import GatewayIdentity
from tether.gateway.mcp import McpGateway, Upstream
from tether.gateway.session import session_task
from tether.sdk.svid import CallableSvid
from tether.server.app import create_app
from tether.store import repo
from tether.testing import make_settings

from .conftest import GATEWAY_PATH

TIME = Upstream(command=[sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"])
TOOLS = "  - {id: time.get_current_time, service: time}\n"
SERVICE = "\n  - {id: time, sensitivity: public, environment: prod, egress: internal}\n"
POLICY = (
    '@id("t")\npermit (principal, action == Tether::Action::"tool:call", '
    'resource in Tether::Service::"time");\n'
)
ARGS = {"timezone": "Europe/Paris"}


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """These tests spawn a real MCP server; they run on SQLite."""
    return sqlite_url


@pytest.fixture
def settings(tmp_path: Any, store_url: str, domain: Any) -> Any:
    """No JWT leeway (an expired SVID is expired at once) and DPoP required, as `tether init`."""
    extra = (
        f'\n[gateway]\nenforcers = ["{domain.spiffe_id(GATEWAY_PATH)}"]\n'
        '\n[identity]\ndpop = "required"\n\n[limits]\njwt_leeway_seconds = 0\n'
    )
    s = make_settings(
        tmp_path / "state",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod"},
        config_extra=extra,
    )
    s.catalog_path.write_text(
        s.catalog_path.read_text().replace("\ntools:\n", SERVICE + "\ntools:\n" + TOOLS, 1)
    )
    (s.policy_path / "50-time.cedar").write_text(POLICY)
    return s


@contextlib.asynccontextmanager
async def remote_session(
    runtime: Any, domain: Any, identity: GatewayIdentity
) -> AsyncIterator[tuple[ClientSession, Any]]:
    """A stock-client session: the gateway opens a DPoP-bound task itself (no token from the client)."""
    app = create_app(runtime)
    broker = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    authorizer = RemoteAuthorizer("http://broker.test", identity, transport=httpx.ASGITransport(app=app))
    agent_svid = CallableSvid(lambda aud: domain.svid("orchestrator", aud))
    gateway = McpGateway("time", authorizer)
    audience = runtime.settings.broker_audience
    async with (
        session_task(
            "http://broker.test",
            audience,
            agent_svid,
            intent="support.triage",
            scope=[("tool:call", "time")],
            ttl=600,
            http=broker,
        ) as task,
        gateway.connect(TIME),
    ):
        gateway.task_token, gateway.session_proof = task.token, task.proof
        server = gateway.server()
        async with create_client_server_memory_streams() as (client, srv), anyio.create_task_group() as tg:
            tg.start_soon(server.run, srv[0], srv[1], server.create_initialization_options())
            async with ClientSession(client[0], client[1]) as session:
                await session.initialize()
                yield session, task
            tg.cancel_scope.cancel()
    await authorizer.aclose()
    await broker.aclose()


def code(result: types.CallToolResult) -> str:
    return str(((result.meta or {}).get("tether") or {}).get("code"))


def test_gateway_keeps_serving_past_its_svid_lifetime(runtime: Any, domain: Any) -> None:
    """With 3 s SVIDs the gateway renews before expiry and every call over 5 s is allowed."""
    minted: list[float] = []

    def mint(aud: str) -> str:
        minted.append(time.time())
        return domain.svid(GATEWAY_PATH, aud, ttl=3)

    identity = GatewayIdentity(CallableSvid(mint), runtime.settings.broker_audience, margin=1.0)

    async def go() -> list[types.CallToolResult]:
        results = []
        async with remote_session(runtime, domain, identity) as (session, _):
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                results.append(await session.call_tool("get_current_time", ARGS))
                await anyio.sleep(0.4)  # wall time must pass: the point is the SVID's lifetime
        return results

    results = anyio.run(go)
    assert len(results) >= 5 and all(not r.is_error for r in results), [code(r) for r in results]
    assert identity.renewals >= 2 and minted[-1] - minted[0] >= 1.0


def test_gateway_identity_expiry_is_refused_logged_and_audited(
    runtime: Any, domain: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewal fails: the refusal says the gateway's identity expired; logged; audited by the broker."""
    state = {"ok": True}

    def mint(aud: str) -> str:
        if not state["ok"]:
            raise OSError("workload api socket is gone")
        return domain.svid(GATEWAY_PATH, aud, ttl=2)

    identity = GatewayIdentity(CallableSvid(mint), runtime.settings.broker_audience, margin=0.5)

    async def go() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with remote_session(runtime, domain, identity) as (session, _):
            first = await session.call_tool("get_current_time", ARGS)
            state["ok"] = False
            with anyio.fail_after(10):
                while time.time() < identity._expires + 0.1:  # the last SVID has run out
                    await anyio.sleep(0.1)
            return first, await session.call_tool("get_current_time", ARGS)

    with caplog.at_level(logging.ERROR, "tether.gateway.identity"), capture_events() as events:
        first, late = anyio.run(go)
    assert not first.is_error
    assert late.is_error and code(late) == "gateway_identity_expired"
    text = "".join(c.text for c in late.content if isinstance(c, types.TextContent))
    assert "gateway's own identity" in text and "expired" in text
    assert any("could not renew" in r.message for r in caplog.records)
    refused = [e for e in events if e.type == "decision" and e.payload.get("action") == "gateway:enforce"]
    assert refused and refused[-1].payload["code"] == "gateway_identity_expired"


def test_session_task_is_dpop_bound_and_closed_on_disconnect(runtime: Any, domain: Any) -> None:
    """The stdio session's task is opened by the gateway, bound to its key, closed at disconnect."""
    identity = GatewayIdentity(
        CallableSvid(lambda aud: domain.svid(GATEWAY_PATH, aud)), runtime.settings.broker_audience
    )

    async def go() -> tuple[types.CallToolResult, str]:
        async with remote_session(runtime, domain, identity) as (session, task):
            return await session.call_tool("get_current_time", ARGS), task.task_id

    result, task_id = anyio.run(go)
    assert not result.is_error, code(result)
    with runtime.db.read() as conn:
        task = repo.get_task(conn, task_id)
    assert task is not None and task.state.value == "closed"
    assert task.cnf_jkt is not None  # sender-constrained: the token alone is useless

"""The agent-facing stream path (`tether.gateway.mcp_stream`): `tools/call` frames answered
next to the SDK's server. Raw JSON-RPC frames on in-memory streams (what stdio carries),
a real subprocess upstream (`hold_mcp_server.py`), in-process broker."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.memory import create_client_server_memory_streams
from mcp.shared.message import SessionMessage

from tether.audit.chain import capture_events
from tether.broker import AuthorizeRequest
from tether.gateway.authorizer import LocalAuthorizer, Verdict
from tether.gateway.mcp import McpGateway, Upstream
from tether.identity.dpop import DpopProof
from tether.testing import make_settings

HERE = Path(__file__).parent
UPSTREAM = Upstream(command=[sys.executable, str(HERE / "hold_mcp_server.py")])
POLICY = """
@id("h")
permit (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"hold");
"""
ECHO = {"name": "echo", "arguments": {"text": "hi"}}


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """These tests spawn a real server process; they run on SQLite."""
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
    service = "\n  - {id: hold, sensitivity: public, environment: prod, egress: internal}\n"
    tools = "".join(f"  - {{id: hold.{t}, service: hold}}\n" for t in ("echo", "hold", "env", "pid"))
    s.catalog_path.write_text(
        s.catalog_path.read_text().replace("\ntools:\n", service + "\ntools:\n" + tools, 1)
    )
    (s.policy_path / "50-hold.cedar").write_text(POLICY)
    return s


def token(agent: Any) -> str:
    r = agent.open([{"action": "tool:call", "resource": "hold"}])
    assert r.status_code == 201, r.text
    return str(r.json()["task_token"])


class Wire:
    """The agent's end of the connection, frame by frame."""

    def __init__(self, read: Any, write: Any) -> None:
        self.read, self.write = read, write

    async def request(self, rid: int | str, method: str, params: dict[str, Any] | None = None) -> None:
        msg = types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=method, params=params)
        await self.write.send(SessionMessage(message=msg))

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg = types.JSONRPCNotification(jsonrpc="2.0", method=method, params=params)
        await self.write.send(SessionMessage(message=msg))

    async def answer(self) -> types.JSONRPCResponse | types.JSONRPCError:
        with anyio.fail_after(20):
            while True:
                item = await self.read.receive()
                assert isinstance(item, SessionMessage), item
                if isinstance(item.message, types.JSONRPCResponse | types.JSONRPCError):
                    return item.message

    async def handshake(self) -> None:
        await self.request(
            0,
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "wire", "version": "1"},
            },
        )
        assert isinstance(await self.answer(), types.JSONRPCResponse)
        await self.notify("notifications/initialized")


@contextlib.asynccontextmanager
async def wire(gateway: McpGateway) -> AsyncIterator[Wire]:
    async with gateway.connect(UPSTREAM):
        app = gateway.server()
        async with create_client_server_memory_streams() as (client, srv), anyio.create_task_group() as tg:
            tg.start_soon(app.run, srv[0], srv[1], app.create_initialization_options())
            yield Wire(client[0], client[1])
            tg.cancel_scope.cancel()


def text(reply: types.JSONRPCResponse | types.JSONRPCError) -> str:
    assert isinstance(reply, types.JSONRPCResponse), reply
    result = types.CallToolResult.model_validate(reply.result)
    assert not result.is_error, result
    return str(result.content[0].text)  # type: ignore[union-attr]


def test_malformed_tools_call_gets_invalid_params_and_the_connection_lives(runtime: Any, agent: Any) -> None:
    gateway = McpGateway("hold", LocalAuthorizer(runtime), task_token=token(agent))

    async def go() -> list[types.JSONRPCResponse | types.JSONRPCError]:
        async with wire(gateway) as w:
            await w.handshake()
            out = []
            for i, params in enumerate(
                [{"arguments": {}}, {"name": 7}, {"name": "echo", "arguments": "text"}, None, ECHO], 1
            ):
                await w.request(i, "tools/call", params)
                out.append(await w.answer())
            return out

    with capture_events() as events:
        replies = anyio.run(go)
    for bad in replies[:4]:
        assert isinstance(bad, types.JSONRPCError) and bad.error.code == types.INVALID_PARAMS, bad
    assert [r.id for r in replies] == [1, 2, 3, 4, 5]
    assert text(replies[4]) == "hi"
    assert [e.type for e in events].count("decision") == 1  # nothing malformed was decided


def test_unreadable_frames_get_jsonrpc_errors_and_the_connection_lives(runtime: Any, agent: Any) -> None:
    """A line that is not JSON, or JSON that is not JSON-RPC, is answered (id null) instead
    of left unanswered; the next call works."""
    gateway = McpGateway("hold", LocalAuthorizer(runtime), task_token=token(agent))

    async def go() -> list[types.JSONRPCResponse | types.JSONRPCError]:
        async with wire(gateway) as w:
            await w.handshake()
            out = []
            for line in ['{"jsonrpc": "2.0", "id": 1, "method": ', '{"hello": "world"}', "[1, 2]"]:
                try:  # what the stdio transport hands the server for such a line
                    types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except ValueError as exc:
                    await w.write.send(exc)
                out.append(await w.answer())
            await w.request(9, "tools/call", ECHO)
            out.append(await w.answer())
            return out

    *bad, good = anyio.run(go)
    assert [(r.id, r.error.code) for r in bad if isinstance(r, types.JSONRPCError)] == [
        (None, types.PARSE_ERROR),
        (None, types.INVALID_REQUEST),
        (None, types.INVALID_REQUEST),
    ]
    assert good.id == 9 and text(good) == "hi"


def test_tools_call_before_the_handshake_is_refused_undecided(runtime: Any, agent: Any) -> None:
    gateway = McpGateway("hold", LocalAuthorizer(runtime), task_token=token(agent))

    async def go() -> types.JSONRPCResponse | types.JSONRPCError:
        async with wire(gateway) as w:
            await w.request(1, "tools/call", ECHO)
            return await w.answer()

    with capture_events() as events:
        reply = anyio.run(go)
    assert isinstance(reply, types.JSONRPCError) and reply.error.code == types.INVALID_PARAMS
    assert not any(e.type == "decision" or e.type.startswith("call.") for e in events)


def test_calls_run_concurrently_and_a_cancelled_call_is_never_answered(
    runtime: Any, agent: Any, tmp_path: Path
) -> None:
    """A held call blocks no other call; cancelled, it gets no answer (JSON-RPC: the peer
    stopped waiting), and the connection carries on."""
    gateway = McpGateway("hold", LocalAuthorizer(runtime), task_token=token(agent))
    gate = tmp_path / "gate"

    async def go() -> list[types.JSONRPCResponse | types.JSONRPCError]:
        async with wire(gateway) as w:
            await w.handshake()
            await w.request("held", "tools/call", {"name": "hold", "arguments": {"gate": str(gate)}})
            await w.request(2, "tools/call", ECHO)
            first = await w.answer()  # echo, while `held` waits upstream
            await w.notify("notifications/cancelled", {"requestId": "held", "reason": "enough"})
            gate.touch()  # the upstream would answer now; the gateway must not relay it
            await w.request(3, "tools/call", ECHO)
            await w.request(4, "ping")
            return [first, await w.answer(), await w.answer()]

    replies = anyio.run(go)
    assert replies[0].id == 2 and {r.id for r in replies[1:]} == {3, 4}
    assert text(replies[0]) == "hi" and text(next(r for r in replies if r.id == 3)) == "hi"


def test_agent_closing_mid_call_gets_connection_closed(runtime: Any, agent: Any, tmp_path: Path) -> None:
    gateway = McpGateway("hold", LocalAuthorizer(runtime), task_token=token(agent))

    async def go() -> types.JSONRPCResponse | types.JSONRPCError:
        async with wire(gateway) as w:
            await w.handshake()
            await w.request(1, "tools/call", {"name": "hold", "arguments": {"gate": str(tmp_path / "never")}})
            await w.request(2, "ping")
            assert isinstance(await w.answer(), types.JSONRPCResponse)  # the call is under way
            await w.write.aclose()
            return await w.answer()

    reply = anyio.run(go)
    assert isinstance(reply, types.JSONRPCError) and reply.id == 1
    assert reply.error.code == types.CONNECTION_CLOSED


def test_call_past_its_timeout_is_abandoned_upstream_and_audited(
    runtime: Any, agent: Any, tmp_path: Path
) -> None:
    """The relayed call that times out is cancelled at the upstream (as the SDK's session
    would), answered `upstream_timeout`, recorded, and the upstream serves the next call."""
    gateway = McpGateway("hold", LocalAuthorizer(runtime), task_token=token(agent), call_timeout=1.0)
    gate = tmp_path / "gate"

    async def go() -> list[types.JSONRPCResponse | types.JSONRPCError]:
        async with wire(gateway) as w:
            await w.handshake()
            await w.request(1, "tools/call", {"name": "hold", "arguments": {"gate": str(gate)}})
            timed_out = await w.answer()
            await w.request(2, "tools/call", ECHO)
            after = await w.answer()
            with anyio.fail_after(10):  # while the upstream still runs: it got the cancel
                while not Path(str(gate) + ".cancelled").exists():
                    await anyio.sleep(0.02)
            return [timed_out, after]

    with capture_events() as events:
        timed_out, after = anyio.run(go)
    assert isinstance(timed_out, types.JSONRPCResponse)
    result = types.CallToolResult.model_validate(timed_out.result)
    assert result.is_error and (result.meta or {})["tether"]["code"] == "upstream_timeout"
    assert text(after) == "hi"
    outcomes = [e.payload["outcome"] for e in events if e.type == "call.forwarded"]
    assert outcomes == ["upstream_timeout", "ok"]


def test_upstream_gets_a_safe_environment_not_the_gateways(
    runtime: Any, agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream process inherits only the SDK's safe variables (PATH, HOME, …): a task
    token or broker credential in the gateway's environment never reaches it."""
    monkeypatch.setenv("TETHER_TASK_TOKEN", "the-agent's-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-upstreams")
    gateway = McpGateway("hold", LocalAuthorizer(runtime), task_token=token(agent))

    async def go() -> types.JSONRPCResponse | types.JSONRPCError:
        async with wire(gateway) as w:
            await w.handshake()
            await w.request(1, "tools/call", {"name": "env", "arguments": {}})
            return await w.answer()

    names = set(text(anyio.run(go)).split(","))
    assert "PATH" in names
    assert not names & {"TETHER_TASK_TOKEN", "AWS_SECRET_ACCESS_KEY"}


def test_upstream_process_is_gone_once_the_gateway_closes(runtime: Any, agent: Any) -> None:
    gateway = McpGateway("hold", LocalAuthorizer(runtime), task_token=token(agent))

    async def go() -> int:
        async with wire(gateway) as w:
            await w.handshake()
            await w.request(1, "tools/call", {"name": "pid", "arguments": {}})
            return int(text(await w.answer()))

    pid = anyio.run(go)
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left running
        os.kill(pid, 0)


class BrokenAuthorizer(LocalAuthorizer):
    """Stands in for a bug inside the gateway: an exception no layer expected."""

    async def authorize(self, token: str, req: AuthorizeRequest, proof: DpopProof | None = None) -> Verdict:
        raise RuntimeError("a bug")


def test_failure_inside_the_gateway_is_an_internal_error_not_a_crash(runtime: Any, agent: Any) -> None:
    gateway = McpGateway("hold", BrokenAuthorizer(runtime), task_token=token(agent))

    async def go() -> list[types.JSONRPCResponse | types.JSONRPCError]:
        async with wire(gateway) as w:
            await w.handshake()
            await w.request(1, "tools/call", ECHO)
            failed = await w.answer()
            await w.request(2, "tools/list")
            return [failed, await w.answer()]

    failed, listed = anyio.run(go)
    assert isinstance(failed, types.JSONRPCError) and failed.error.code == types.INTERNAL_ERROR
    assert "a bug" not in failed.error.message  # no exception text on the wire
    assert isinstance(listed, types.JSONRPCResponse)

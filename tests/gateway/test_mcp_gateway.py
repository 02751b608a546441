"""The MCP gateway between a real `mcp` ClientSession and real MCP reference servers
(`mcp-server-time`, `mcp-server-git` from PyPI), authorizing in-process."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from tether.audit.chain import capture_events
from tether.broker import args_digest
from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.mcp import McpGateway, Upstream
from tether.gateway.pins import definition_digest
from tether.store.gateway_tables import tool_definitions
from tether.testing import make_settings

TIME = Upstream(command=[sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"])
GIT = Upstream(command=[sys.executable, "-m", "mcp_server_git"])

CATALOG_EXTRA = """
  - {id: time, sensitivity: public, environment: prod, egress: internal, owner: team-platform}
  - id: git
    sensitivity: internal
    environment: prod
    egress: internal
    owner: team-platform
    arguments: {repo_path: {type: path, roots: [ROOT], required: true}}
"""
TOOLS_EXTRA = """
  - {id: time.get_current_time, service: time}
  - {id: time.convert_time, service: time}
  - {id: git.git_status, service: git}
  - {id: git.git_log, service: git}
  - {id: git.git_commit, service: git}
"""
POLICY = """
@id("mcp-time")
permit (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"time")
when { context.task.intent == "support.triage" };

// Argument rules are forbids, so the tool stays listed and the call says why it was refused.
@id("mcp-time-europe-only")
@reason("only European time zones")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"time.get_current_time")
unless { context.call.hasTag("timezone") && context.call.getTag("timezone") like "Europe/*" };

@id("mcp-convert-needs-approval")
@approval("converting times needs a human")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"time.convert_time")
unless { context.approval.granted };

@id("mcp-git-read")
permit (principal, action == Tether::Action::"tool:call", resource)
when { resource == Tether::Tool::"git.git_status" || resource == Tether::Tool::"git.git_log" };

@id("mcp-git-one-folder")
@reason("only repositories under the allowed folder")
forbid (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"git")
unless { context.args.under.contains("ALLOWED") };
"""
CALL_TIME = {"action": "tool:call", "resource": "time.get_current_time"}


@pytest.fixture
def store_url(sqlite_url):
    """MCP tests spawn real servers; they run on SQLite (pins run on both backends)."""
    return sqlite_url


@pytest.fixture
def repos(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("allowed/app", "other/app"):
        repo = tmp_path / name
        repo.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        (repo / "README").write_text("hello\n")
        out[name.split("/")[0]] = repo
    return out


@pytest.fixture
def settings(tmp_path, store_url, domain, repos):
    s = make_settings(
        tmp_path / "state",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod"},
        config_extra='\n[identity]\ndpop = "optional"\n',
    )
    catalog = s.catalog_path.read_text()
    extra = CATALOG_EXTRA.replace("ROOT", str(tmp_path))
    catalog = catalog.replace("\ntools:\n", extra + "\ntools:\n" + TOOLS_EXTRA.lstrip("\n"), 1)
    s.catalog_path.write_text(catalog)
    (s.policy_path / "50-mcp.cedar").write_text(POLICY.replace("ALLOWED", str(repos["allowed"].parent)))
    return s


@contextlib.asynccontextmanager
async def through_gateway(
    runtime: Any, token: str | None, upstream: Upstream = TIME, server: str = "time", **options: Any
) -> AsyncIterator[ClientSession]:
    """A real ClientSession talking to the gateway (in memory), which talks to a real server."""
    gateway = McpGateway(server, LocalAuthorizer(runtime), task_token=token, **options)
    async with gateway.connect(upstream):
        app = gateway.server()
        async with create_client_server_memory_streams() as (client, srv), anyio.create_task_group() as tg:
            tg.start_soon(app.run, srv[0], srv[1], app.create_initialization_options())
            async with ClientSession(client[0], client[1]) as session:
                await session.initialize()
                yield session
            tg.cancel_scope.cancel()


def open_token(agent, scope) -> str:
    r = agent.open(scope)
    assert r.status_code == 201, r.text
    return str(r.json()["task_token"])


def meta(result: types.CallToolResult) -> dict[str, Any]:
    return dict((result.meta or {}).get("tether") or {})


def run(fn: Any, *args: Any) -> Any:
    return anyio.run(fn, *args)


def test_tools_list_filtered_by_scope_and_policy(runtime, agent):
    """The agent sees only tools in its scope that some policy permits."""
    token = open_token(agent, [CALL_TIME, {"action": "tool:call", "resource": "git"}])

    async def go() -> tuple[list[str], list[str]]:
        async with through_gateway(runtime, token) as s:
            time_tools = [t.name for t in (await s.list_tools()).tools]
        async with through_gateway(runtime, token, GIT, "git") as s:
            git_tools = [t.name for t in (await s.list_tools()).tools]
        return time_tools, git_tools

    time_tools, git_tools = run(go)
    assert time_tools == ["get_current_time"]  # convert_time: outside the task scope
    assert sorted(git_tools) == ["git_log", "git_status"]  # git_commit: no permit; others: not in catalog


def test_allowed_call_reaches_real_server_and_is_audited(runtime, agent):
    """An allowed call returns the real server's answer and is recorded with its decision."""
    token = open_token(agent, [CALL_TIME])
    args = {"timezone": "Europe/Paris"}

    async def go() -> types.CallToolResult:
        async with through_gateway(runtime, token) as s:
            return await s.call_tool("get_current_time", args)

    with capture_events() as events:
        result = run(go)
    assert not result.is_error
    assert result.structured_content["timezone"] == "Europe/Paris"
    decision = next(e for e in events if e.type == "decision")
    call = next(e for e in events if e.type == "call.forwarded")
    assert decision.payload["outcome"] == "allow" and call.decision_id == decision.decision_id
    p = call.payload
    assert (p["gateway"], p["tool"], p["outcome"]) == ("mcp", "get_current_time", "ok")
    assert p["args_digest"] == args_digest(args) and "arguments" not in p
    assert call.task_id == decision.task_id


def test_argument_rule_denies_call_with_reason(runtime, agent):
    """A call whose arguments a policy forbids is an error result saying denied, with the decision."""
    token = open_token(agent, [CALL_TIME])

    async def go() -> types.CallToolResult:
        async with through_gateway(runtime, token) as s:
            return await s.call_tool("get_current_time", {"timezone": "Asia/Tokyo"})

    result = run(go)
    assert result.is_error
    m = meta(result)
    assert (m["decision"], m["code"]) == ("deny", "policy_forbid")
    assert [r["policy_id"] for r in m["reasons"]] == ["mcp-time-europe-only"]
    assert m["decision_id"].startswith("dec_")


def test_out_of_scope_tool_denied_not_not_found(runtime, agent):
    """A real tool outside the task scope is refused as a deny (`out_of_scope`), not as unknown."""
    token = open_token(agent, [CALL_TIME])

    async def go() -> types.CallToolResult:
        async with through_gateway(runtime, token) as s:
            return await s.call_tool(
                "convert_time", {"source_timezone": "UTC", "time": "10:00", "target_timezone": "Europe/Paris"}
            )

    result = run(go)
    assert result.is_error and meta(result)["code"] == "out_of_scope"


def test_approval_required_returns_approval_id(runtime, agent):
    """`approval_required` is an error result carrying the approval id; a granted approval lets it run."""
    token = open_token(agent, [{"action": "tool:call", "resource": "time.convert_time"}])
    args = {"source_timezone": "UTC", "time": "10:00", "target_timezone": "Europe/Paris"}

    async def go() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with through_gateway(runtime, token) as s:
            first = await s.call_tool("convert_time", args)
            await anyio.to_thread.run_sync(
                lambda: runtime.broker.decide_approval(meta(first)["approval_id"], grant=True, by="uid:0")
            )
            return first, await s.call_tool("convert_time", args)

    first, second = run(go)
    assert first.is_error and meta(first)["code"] == "approval_required"
    assert meta(first)["approval_id"].startswith("apr_")
    assert not second.is_error


def seed_pin(runtime: Any, definition: dict[str, Any]) -> None:
    with runtime.db.begin() as conn:
        conn.execute(
            tool_definitions.insert().values(
                server="time",
                tool="get_current_time",
                state="approved",
                digest=definition_digest(definition),
                definition=json.dumps(definition),
                first_seen=0.0,
            )
        )


def test_rug_pull_tool_definition_change_blocked(runtime, agent):
    """A definition that differs from the approved pin: tool hidden, calls blocked, change audited."""
    # What an operator approved earlier; the server now presents another description/schema.
    seed_pin(
        runtime,
        {
            "name": "get_current_time",
            "description": "Get the time (approved wording)",
            "inputSchema": {"type": "object"},
        },
    )
    token = open_token(agent, [CALL_TIME])

    async def go() -> tuple[list[str], types.CallToolResult]:
        async with through_gateway(runtime, token) as s:
            listed = [t.name for t in (await s.list_tools()).tools]
            return listed, await s.call_tool("get_current_time", {"timezone": "Europe/Paris"})

    with capture_events() as events:
        listed, result = run(go)
    assert listed == []
    assert result.is_error and meta(result)["code"] == "tool_definition_changed"
    changed = [e for e in events if e.type == "tool.definition_changed"]
    assert len(changed) == 1 and changed[0].payload["change"] == "detected"
    assert set(changed[0].payload["fields"]) >= {"description", "inputSchema"}
    assert not any(e.type == "call.forwarded" for e in events)


def test_approved_tool_definition_change_unblocks(runtime, agent):
    """After `tether mcp tools approve` the changed tool is listed and callable again."""
    seed_pin(runtime, {"name": "get_current_time", "description": "old"})
    token = open_token(agent, [CALL_TIME])
    pins = runtime.pins

    async def go() -> types.CallToolResult:
        async with through_gateway(runtime, token, refresh_seconds=0) as s:
            blocked = await s.call_tool("get_current_time", {"timezone": "Europe/Paris"})
            assert meta(blocked)["code"] == "tool_definition_changed"
            views = await anyio.to_thread.run_sync(pins.list, "time")
            (view,) = [v for v in views if v["tool"] == "get_current_time" and v["state"] == "pending"]
            await anyio.to_thread.run_sync(
                lambda: pins.approve("time", "get_current_time", by="uid:0", digest=view["digest"])
            )
            return await s.call_tool("get_current_time", {"timezone": "Europe/Paris"})

    assert not run(go).is_error


def test_approval_takes_effect_on_the_next_call(runtime, agent):
    """No 30 s cache: right after `approve`, the next call of a gateway that saw the change works."""
    seed_pin(runtime, {"name": "get_current_time", "description": "old"})
    token = open_token(agent, [CALL_TIME])
    pins = runtime.pins

    async def go() -> tuple[types.CallToolResult, types.CallToolResult, list[str]]:
        async with through_gateway(runtime, token) as s:  # refresh_seconds stays at 30
            blocked = await s.call_tool("get_current_time", {"timezone": "Europe/Paris"})
            (view,) = [
                v for v in await anyio.to_thread.run_sync(pins.list, "time") if v["state"] == "pending"
            ]
            await anyio.to_thread.run_sync(
                lambda: pins.approve("time", "get_current_time", by="uid:0", digest=view["digest"])
            )
            listed = [t.name for t in (await s.list_tools()).tools]
            return blocked, await s.call_tool("get_current_time", {"timezone": "Europe/Paris"}), listed

    with capture_events() as events:
        blocked, after, listed = run(go)
    assert meta(blocked)["code"] == "tool_definition_changed" and not after.is_error
    assert listed == ["get_current_time"]
    blocked_records = [e for e in events if e.type == "call.result"]
    assert len(blocked_records) == 1 and blocked_records[0].payload["outcome"].startswith("blocked")


def test_revoked_task_token_refused(runtime, agent):
    """After the task is revoked its token is refused on the very next call."""
    r = agent.open([CALL_TIME])
    token, task_id = r.json()["task_token"], r.json()["task_id"]

    async def go() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with through_gateway(runtime, token) as s:
            ok = await s.call_tool("get_current_time", {"timezone": "Europe/Paris"})
            await anyio.to_thread.run_sync(lambda: runtime.broker.revoke(task_id=task_id, by="uid:0"))
            return ok, await s.call_tool("get_current_time", {"timezone": "Europe/Paris"})

    ok, refused = run(go)
    assert not ok.is_error
    assert refused.is_error and meta(refused)["code"] == "task_not_active"
    assert "no longer active" in refused.content[0].text and "policy" not in refused.content[0].text


def test_missing_task_token_refused(runtime):
    """Without a task token nothing is listed and no call is forwarded."""

    async def go() -> tuple[int, types.CallToolResult]:
        async with through_gateway(runtime, None) as s:
            try:
                await s.list_tools()
                code = 0
            except Exception as exc:  # MCPError from the gateway
                code = exc.error.code  # type: ignore[attr-defined]
            return code, await s.call_tool("get_current_time", {"timezone": "Europe/Paris"})

    code, result = run(go)
    assert code == -32001
    assert result.is_error and meta(result)["code"] == "missing_token"


def test_git_repo_path_rule(runtime, agent, repos):
    """mcp-server-git: `git_status` runs inside the allowed folder and is denied outside it."""
    token = open_token(agent, [{"action": "tool:call", "resource": "git"}])

    async def go() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with through_gateway(runtime, token, GIT, "git") as s:
            inside = await s.call_tool("git_status", {"repo_path": str(repos["allowed"])})
            outside = await s.call_tool("git_status", {"repo_path": str(repos["other"])})
            return inside, outside

    inside, outside = run(go)
    assert not inside.is_error and "README" in inside.content[0].text
    assert outside.is_error and meta(outside)["code"] == "policy_forbid"


def test_git_repo_path_dotdot_traversal_is_denied(runtime, agent, repos):
    """`allowed/../other/app` is the other repository (policy), `../../..` leaves the roots (invariant)."""
    token = open_token(agent, [{"action": "tool:call", "resource": "git"}])
    allowed = str(repos["allowed"].parent)

    async def go() -> list[types.CallToolResult]:
        async with through_gateway(runtime, token, GIT, "git") as s:
            return [
                await s.call_tool("git_status", {"repo_path": f"{allowed}/../other/app"}),
                await s.call_tool("git_status", {"repo_path": f"{allowed}/%2e%2e/other/app"}),
                await s.call_tool("git_status", {"repo_path": f"{allowed}/../../../../../etc"}),
                await s.call_tool("git_status", {}),
            ]

    sibling, encoded, escape, missing = run(go)
    assert meta(sibling)["code"] == meta(encoded)["code"] == "policy_forbid"
    assert "mcp-git-one-folder" in sibling.content[0].text
    assert (
        meta(escape)["code"] == "path_outside_roots"
        and "refused (path_outside_roots)" in escape.content[0].text
    )
    assert meta(missing)["code"] == "argument_missing"


def test_record_arguments_opt_in(runtime, agent):
    """Arguments reach the audit log only when the gateway is configured to record them."""
    token = open_token(agent, [CALL_TIME])

    async def go() -> None:
        async with through_gateway(runtime, token, record_arguments=True) as s:
            await s.call_tool("get_current_time", {"timezone": "Europe/Paris"})

    with capture_events() as events:
        run(go)
    call = next(e for e in events if e.type == "call.forwarded")
    assert call.payload["arguments"] == {"timezone": "Europe/Paris"}


def test_streamable_http_bearer_and_list(runtime, agent):
    """Over Streamable HTTP the task token is the bearer; without one the gateway answers 401."""
    import httpx2
    import uvicorn
    from mcp.client.streamable_http import streamable_http_client

    from .conftest import free_port

    token = open_token(agent, [CALL_TIME])
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"

    async def go() -> tuple[int, list[str], bool]:
        gateway = McpGateway("time", LocalAuthorizer(runtime))
        async with gateway.connect(TIME):
            server = uvicorn.Server(
                uvicorn.Config(
                    gateway.http_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
                )
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                with anyio.fail_after(10):
                    while not server.started:
                        await anyio.sleep(0.01)
                async with httpx2.AsyncClient() as bare:
                    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
                    unauth = (await bare.post(url, json=ping)).status_code
                headers = {"Authorization": f"Bearer {token}"}
                async with (
                    httpx2.AsyncClient(headers=headers) as http,
                    streamable_http_client(url, http_client=http) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    listed = [t.name for t in (await session.list_tools()).tools]
                    result = await session.call_tool("get_current_time", {"timezone": "Europe/Paris"})
                server.should_exit = True
        return unauth, listed, bool(result.is_error)

    unauth, listed, is_error = run(go)
    assert unauth == 401
    assert listed == ["get_current_time"] and not is_error

"""The MCP gateway in front of the official filesystem server (npm
`@modelcontextprotocol/server-filesystem`, installed by `make test` into ./.node), driven by
the MCP Python SDK client: folder-rule attacks are denied, allowed reads succeed.

The server itself is told it may read all of `data/` (secret included), so every refusal
below is Tether's, not the server's own directory check.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from tether.audit.chain import capture_events
from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.mcp import McpGateway, Upstream
from tether.testing import make_settings

REPO = Path(__file__).resolve().parents[2]
FS_SERVER = REPO / ".node" / "node_modules" / ".bin" / "mcp-server-filesystem"
SECRET = "TOPSECRET-4f1c"

POLICY = """
@id("fs-read")
@reason("reading files")
permit (principal, action == Tether::Action::"tool:call", resource)
when {
  resource == Tether::Tool::"fs.read_text_file" ||
  resource == Tether::Tool::"fs.read_multiple_files" ||
  resource == Tether::Tool::"fs.get_file_info"
};

@id("fs-public-only")
@reason("only files under the public folder")
forbid (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"fs")
unless { context.args.under.contains("DATA/public") };
"""


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """The filesystem tests spawn a real Node server; they run on SQLite."""
    return sqlite_url


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """`data/public` (readme, a symlink to the secret file, a symlink to the secret folder)
    and `data/secret/key.txt`."""
    root = tmp_path / "data"
    (root / "public" / "sub").mkdir(parents=True)
    (root / "secret").mkdir()
    (root / "public" / "readme.txt").write_text("hello from public\n")
    (root / "public" / "sub" / "b.txt").write_text("b\n")
    (root / "secret" / "key.txt").write_text(SECRET + "\n")
    (root / "public" / "link.txt").symlink_to(root / "secret" / "key.txt")
    (root / "public" / "dirlink").symlink_to(root / "secret")
    return root.resolve()


@pytest.fixture
def settings(tmp_path: Path, store_url: str, domain: Any, data: Path) -> Any:
    s = make_settings(
        tmp_path / "state",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod"},
        config_extra='\n[identity]\ndpop = "optional"\n',
    )
    roots = f"[{data}]"
    service = (
        "\n  - id: fs\n    sensitivity: internal\n    environment: prod\n    egress: internal\n"
        f"    arguments:\n      path: {{type: path, roots: {roots}}}\n"
        f"      paths: {{type: path, roots: {roots}}}\n"
    )
    tools = "".join(
        f"  - {{id: fs.{t}, service: fs}}\n"
        for t in ("read_text_file", "read_multiple_files", "get_file_info", "write_file")
    )
    catalog = s.catalog_path.read_text().replace("\ntools:\n", service + "\ntools:\n" + tools, 1)
    s.catalog_path.write_text(catalog)
    (s.policy_path / "50-fs.cedar").write_text(POLICY.replace("DATA", str(data)))
    return s


@contextlib.asynccontextmanager
async def filesystem(runtime: Any, token: str, data: Path) -> AsyncIterator[ClientSession]:
    assert FS_SERVER.exists(), "run `make mcp-servers` (scripts/ensure-mcp-servers) first"
    assert shutil.which("node"), "Node.js is needed for the filesystem server"
    gateway = McpGateway("fs", LocalAuthorizer(runtime), task_token=token)
    async with gateway.connect(Upstream(command=[str(FS_SERVER), str(data)])):
        app = gateway.server()
        async with create_client_server_memory_streams() as (client, srv), anyio.create_task_group() as tg:
            tg.start_soon(app.run, srv[0], srv[1], app.create_initialization_options())
            async with ClientSession(client[0], client[1]) as session:
                await session.initialize()
                yield session
            tg.cancel_scope.cancel()


def open_token(agent: Any) -> str:
    r = agent.open([{"action": "tool:call", "resource": "fs"}])
    assert r.status_code == 201, r.text
    return str(r.json()["task_token"])


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def code(result: types.CallToolResult) -> str:
    return str(((result.meta or {}).get("tether") or {}).get("code"))


def calls(
    runtime: Any, agent: Any, data: Path, *batch: tuple[str, dict[str, Any]]
) -> list[types.CallToolResult]:
    token = open_token(agent)

    async def go() -> list[types.CallToolResult]:
        async with filesystem(runtime, token, data) as s:
            return [await s.call_tool(tool, args) for tool, args in batch]

    return anyio.run(go)


def test_allowed_reads_succeed(runtime: Any, agent: Any, data: Path) -> None:
    """A public file and a list of public files are read through the gateway."""
    one, many = calls(
        runtime,
        agent,
        data,
        ("read_text_file", {"path": f"{data}/public/readme.txt"}),
        ("read_multiple_files", {"paths": [f"{data}/public/readme.txt", f"{data}/public/sub/b.txt"]}),
    )
    assert not one.is_error and "hello from public" in text(one)
    assert not many.is_error and "hello from public" in text(many)


def test_dotdot_traversal_is_denied(runtime: Any, agent: Any, data: Path) -> None:
    """`public/../secret` is refused by the folder rule; `../..` out of the roots before policy."""
    inside, outside = calls(
        runtime,
        agent,
        data,
        ("read_text_file", {"path": f"{data}/public/../secret/key.txt"}),
        ("read_text_file", {"path": f"{data}/public/../../../../etc/passwd"}),
    )
    assert inside.is_error and code(inside) == "policy_forbid" and SECRET not in text(inside)
    assert "fs-public-only" in text(inside)
    assert outside.is_error and code(outside) == "path_outside_roots"


def test_encoded_traversal_is_denied(runtime: Any, agent: Any, data: Path) -> None:
    """`%2e%2e` and `%252e%252e` are decoded before the dot segments go: refused."""
    once, twice = calls(
        runtime,
        agent,
        data,
        ("read_text_file", {"path": f"{data}/public/%2e%2e/secret/key.txt"}),
        ("read_text_file", {"path": f"{data}/public/%252e%252e/secret/key.txt"}),
    )
    for result in (once, twice):
        assert result.is_error and code(result) == "policy_forbid" and SECRET not in text(result)


def test_symlink_escape_is_denied(runtime: Any, agent: Any, data: Path) -> None:
    """A file symlink and a folder symlink in public that point at secret are refused."""
    file_link, dir_link = calls(
        runtime,
        agent,
        data,
        ("read_text_file", {"path": f"{data}/public/link.txt"}),
        ("read_text_file", {"path": f"{data}/public/dirlink/key.txt"}),
    )
    for result in (file_link, dir_link):
        assert result.is_error and code(result) == "policy_forbid" and SECRET not in text(result)


def test_list_packing_is_denied(runtime: Any, agent: Any, data: Path) -> None:
    """One secret entry in `read_multiple_files` refuses the whole call, symlinked or not."""
    packed, linked = calls(
        runtime,
        agent,
        data,
        ("read_multiple_files", {"paths": [f"{data}/public/readme.txt", f"{data}/secret/key.txt"]}),
        ("read_multiple_files", {"paths": [f"{data}/public/readme.txt", f"{data}/public/link.txt"]}),
    )
    for result in (packed, linked):
        assert result.is_error and code(result) == "policy_forbid" and SECRET not in text(result)


def test_decision_records_canonical_arguments(runtime: Any, agent: Any, data: Path) -> None:
    """The decision event holds the canonical path policy read; the forward is canonical too."""
    with capture_events() as events:
        (result,) = calls(
            runtime, agent, data, ("read_text_file", {"path": f"{data}//public/./sub/../readme.txt"})
        )
    assert not result.is_error
    decision = next(
        e for e in events if e.type == "decision" and e.payload.get("resource") == "fs.read_text_file"
    )
    assert decision.payload["typed_arguments"] == {"path": f"{data}/public/readme.txt"}


def test_unlisted_tool_refusal_reveals_nothing(runtime: Any, agent: Any, data: Path) -> None:
    """An upstream tool outside the catalog is refused exactly like a tool that does not exist."""
    real, made_up = calls(
        runtime,
        agent,
        data,
        ("list_allowed_directories", {}),
        ("no_such_tool_at_all", {}),
    )
    assert code(real) == code(made_up) == "unknown_tool"
    assert text(real).replace("list_allowed_directories", "X") == text(made_up).replace(
        "no_such_tool_at_all", "X"
    )

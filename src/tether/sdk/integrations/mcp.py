"""MCP: reach an MCP server only through the tether MCP gateway, for one task.

    from tether.sdk.integrations.mcp import gateway_session

    with client.task(intent="support.triage", scope=[("tool:call", "email.send")]) as task:
        async with gateway_session(task, server="email", upstream=["python", "-m", "my_server"],
                                   broker_url=client.url) as session:
            result = await session.call_tool("send", {"to": "c@example.com"})

The helper starts ``tether gateway mcp`` over stdio with the upstream server behind it
and hands it the task token in its environment; the agent's session only ever talks to
the gateway, which authorizes every ``tools/call`` as ``tool:call`` on
``<server>.<tool>`` and hides tools the task could never use.

Over stdio no per-request DPoP proof can travel, so the task must be unbound (open it
with a client created with ``dpop=False``); a bound token is refused here, early.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError
from tether.sdk.svid import unverified_expiry
from tether.sdk.task import AsyncTask, Task

if TYPE_CHECKING:
    from mcp import ClientSession, StdioServerParameters

__all__ = ["gateway_server_params", "gateway_session"]

#: Runs the installed CLI with this interpreter, so a venv without ``tether`` on PATH works.
_CLI = "import sys; from tether.cli import main; sys.exit(main())"


def _bound(token: str) -> bool:
    import base64
    import json

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return False
    return isinstance(claims, dict) and "cnf" in claims


def gateway_server_params(
    task: Task | AsyncTask,
    *,
    server: str,
    upstream: Sequence[str] | str,
    broker_url: str,
    gateway_svid_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    record_arguments: bool = False,
) -> StdioServerParameters:
    """``StdioServerParameters`` that launch the gateway for ``task`` in front of ``upstream``.

    Use them anywhere an MCP client takes a stdio server (the ``mcp`` SDK, or an agent
    framework's MCP support). ``gateway_svid_file`` is the gateway's own JWT-SVID (it must
    be one of the broker's ``gateway.enforcers``).
    """
    from mcp import StdioServerParameters

    if _bound(task.token):
        raise ConfigError(
            "this task's token is DPoP-bound and cannot travel over stdio; open the task "
            "with `Client(..., dpop=False)` for a stdio MCP gateway",
            code="token_bound",
        )
    if unverified_expiry(task.token) is None:
        raise ConfigError("the task token is not a JWT", code="invalid_token")
    command = upstream if isinstance(upstream, str) else shlex.join(upstream)
    child_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV")}
    child_env.update(env or {})
    child_env["TETHER_TASK_TOKEN"] = task.token
    child_env["TETHER_BROKER_URL"] = broker_url
    if gateway_svid_file is not None:
        child_env["TETHER_GATEWAY_SVID_FILE"] = str(gateway_svid_file)
    args = ["-c", _CLI, "gateway", "mcp", "--server", server, "--upstream-cmd", command]
    if record_arguments:
        args.append("--record-arguments")
    return StdioServerParameters(command=sys.executable, args=args, env=child_env)


@contextlib.asynccontextmanager
async def gateway_session(
    task: Task | AsyncTask,
    *,
    server: str,
    upstream: Sequence[str] | str,
    broker_url: str,
    gateway_svid_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> AsyncIterator[ClientSession]:
    """An initialized ``mcp.ClientSession`` to ``upstream`` through the gateway, for ``task``."""
    from mcp import ClientSession, stdio_client

    params = gateway_server_params(
        task,
        server=server,
        upstream=upstream,
        broker_url=broker_url,
        gateway_svid_file=gateway_svid_file,
        env=env,
        **kwargs,
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session

"""MCP + tether: the agent's MCP session goes through the tether MCP gateway.

The gateway is launched over stdio in front of the server command, for this task only;
it lists only the tools the task could use and authorizes every call.

    python examples/mcp_gateway.py
"""

from __future__ import annotations

import asyncio
import sys

from _broker import broker_client

from tether.demo.stack import AGENTS
from tether.sdk import WorkloadApiSvid
from tether.sdk.integrations.mcp import gateway_session

UPSTREAM = [sys.executable, "-m", "tether.demo.email_server"]


async def main(task, stack) -> None:
    svid_file = stack.state_dir / "gateway.svid"  # the gateway's own identity (a configured enforcer)
    svid_file.write_text(
        WorkloadApiSvid(stack.workload_socket, spiffe_id=AGENTS["gateway"]).fetch(
            stack.settings.broker_audience
        )
    )
    # The email service's API key lives in the broker; the gateway injects it, the agent never sees it.
    stack.admin("secrets.set", {"name": "email", "value": "example-smtp-key"})
    async with gateway_session(
        task, server="email", upstream=UPSTREAM, broker_url=stack.url, gateway_svid_file=svid_file
    ) as session:
        print("tools:", [t.name for t in (await session.list_tools()).tools])
        result = await session.call_tool("send", {"to": "dana@example.com", "subject": "hi", "body": "…"})
        print("error" if result.is_error else "ok", [getattr(c, "text", "") for c in result.content])


# Over stdio no DPoP proof can travel with each call: this agent's tokens are unbound.
with (
    broker_client("notifier", dpop=False) as client,
    client.task("support.triage", [("tool:call", "email.send")], ttl=120) as task,
):
    asyncio.run(main(task, client.stack))  # type: ignore[attr-defined]

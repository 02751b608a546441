"""A Streamable HTTP MCP server for the per-call credential test: `whoami` answers with
the `Authorization` header its request carried. Usage: headers_mcp_server.py PORT"""

from __future__ import annotations

import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("headers")


@server.tool()
def whoami(ctx: Context) -> str:
    """The Authorization header of this call."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return str(headers.get("authorization", "") if headers is not None else "")


if __name__ == "__main__":
    app = server.streamable_http_app(stateless_http=True, json_response=True)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

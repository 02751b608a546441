"""The demo's MCP server: an "email" service with one tool, run over stdio.

It is an ordinary MCP server that knows nothing of tether; the gateway in front of it
decides whether a call reaches it (``Tool::"email.send"`` in the catalog).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("email")


@server.tool()
def send(to: str, subject: str, body: str) -> str:
    """Send an email to a customer."""
    return f"sent to {to}: {subject}"


if __name__ == "__main__":
    server.run("stdio")

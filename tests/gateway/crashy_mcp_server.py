"""A small stdio MCP server for the upstream-death tests: `echo` answers, `die` kills the
process mid-call (as a crashing real server would). Each start appends a line to the file
named by its first argument, so a test can count restarts."""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("crashy")


@server.tool()
def echo(text: str) -> str:
    """Say it back."""
    return text


@server.tool()
def die() -> str:
    """Exit the process at once."""
    os._exit(3)


if __name__ == "__main__":
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\n")
    server.run("stdio")

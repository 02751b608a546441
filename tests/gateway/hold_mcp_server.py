"""A small stdio MCP server for the stream tests: `echo` answers at once, `hold` answers
only once the file it names exists (bounded), so a test controls when a call finishes; a
`hold` cancelled by its client (`notifications/cancelled`) leaves `<gate>.cancelled`;
`env` names the environment variables the process got, `pid` says which process it is."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("hold")


@server.tool()
def echo(text: str) -> str:
    """Say it back."""
    return text


@server.tool()
async def hold(gate: str) -> str:
    """Answer once `gate` exists (at most 30 s)."""
    try:
        with anyio.move_on_after(30):
            while not Path(gate).exists():
                await anyio.sleep(0.01)
    except anyio.get_cancelled_exc_class():
        Path(gate + ".cancelled").touch()
        raise
    return "released"


@server.tool()
def env() -> str:
    """The names of this process's environment variables."""
    return ",".join(sorted(os.environ))


@server.tool()
def pid() -> str:
    """This process's id."""
    return str(os.getpid())


if __name__ == "__main__":
    server.run("stdio")

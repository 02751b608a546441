"""A stdio MCP server on the gateway's agent-facing transport (`tether.gateway.mcp_stdio`),
for the transport tests: `echo` says it back, `stray` writes to stdout (print and fd 1)
before answering, which must never reach the wire, `threads` counts this process's
threads (the tools are async, so none runs in a worker thread). On exit it writes
whether fd 0 and fd 1 were put back as they were (the wire again, in blocking mode) to
the file named in argv."""

from __future__ import annotations

import json
import os
import sys
import threading

import anyio
from mcp.server.mcpserver import MCPServer

from tether.gateway.mcp_stdio import stdio_streams

server = MCPServer("transport")


@server.tool()
async def echo(text: str) -> str:
    """Say it back."""
    return text


@server.tool()
async def stray() -> str:
    """Write to stdout, then answer."""
    print("stray print", flush=True)
    os.write(1, b"stray raw write\n")
    return "ok"


@server.tool()
async def threads() -> str:
    """How many threads this process runs (the SDK's own transport adds worker threads)."""
    return str(threading.active_count())


def state() -> dict[str, object]:
    return {fd: [os.fstat(fd).st_ino, os.get_blocking(fd)] for fd in (0, 1)}


async def main() -> None:
    before = state()
    lowlevel = server._lowlevel_server
    async with stdio_streams() as (read, write):
        await lowlevel.run(read, write, lowlevel.create_initialization_options())
    with open(sys.argv[1], "w") as f:
        json.dump({"restored": state() == before}, f)


if __name__ == "__main__":
    anyio.run(main)

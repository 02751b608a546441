"""The MCP gateway's agent-facing stdio (`tether.gateway.mcp_stdio`): a stock SDK client
launches a server on it over real pipes, as a desktop client launches `tether gateway mcp`."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from tether.gateway.mcp_stdio import _Lines

HERE = Path(__file__).parent
SERVER = HERE / "stdio_transport_server.py"


def text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    return str(result.content[0].text)  # type: ignore[union-attr]


def test_stock_client_over_pipes_frames_without_threads_and_stray_output_stays_off_the_wire(
    tmp_path: Path,
) -> None:
    """Long lines (many pipe reads), concurrent calls and a tool writing to stdout all work;
    nothing but frames reaches the client; no worker thread serves the frames; on EOF the
    server exits with fd 0 and fd 1 back as they were (the wire, blocking)."""
    report, errlog = tmp_path / "report.json", tmp_path / "stderr.txt"
    bad_lines: list[Any] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):  # a line on the wire that was not JSON-RPC
            bad_lines.append(message)

    async def go() -> dict[str, Any]:
        params = StdioServerParameters(command=sys.executable, args=[str(SERVER), str(report)])
        with errlog.open("w") as err, anyio.fail_after(60):
            async with (
                stdio_client(params, errlog=err) as (read, write),
                ClientSession(read, write, message_handler=on_message) as session,
            ):
                await session.initialize()
                big = "é☃x" * 120_000  # ~0.6 MB on the wire: a frame across many reads
                out: dict[str, Any] = {"big": text(await session.call_tool("echo", {"text": big})) == big}
                many: dict[int, str] = {}

                async def one(i: int) -> None:
                    many[i] = text(await session.call_tool("echo", {"text": f"n{i}"}))

                async with anyio.create_task_group() as tg:
                    for i in range(20):
                        tg.start_soon(one, i)
                out["many"] = many == {i: f"n{i}" for i in range(20)}
                out["stray"] = text(await session.call_tool("stray", {}))
                out["after"] = text(await session.call_tool("echo", {"text": "still here"}))
                out["threads"] = text(await session.call_tool("threads", {}))
        return out

    out = anyio.run(go)
    stderr = errlog.read_text()
    assert out == {"big": True, "many": True, "stray": "ok", "after": "still here", "threads": "1"}, stderr
    assert not bad_lines, (bad_lines, stderr)
    assert "stray print" in stderr and "stray raw write" in stderr, stderr
    # The client's exit waited for the server to end (EOF, then its report, then exit).
    assert json.loads(report.read_text()) == {"restored": True}, stderr


@pytest.mark.parametrize("stdin", ["file", "devnull"])
def test_stdin_that_is_no_pipe_takes_the_sdks_transport(tmp_path: Path, stdin: str) -> None:
    """A file (or the null device) on stdin is served by the SDK's own transport: the
    handshake in it is answered on stdout, then EOF ends the server cleanly. (A call read
    just before EOF may be cut off by the SDK's shutdown: only the handshake is awaited.)"""
    frames = tmp_path / "frames.jsonl"
    init = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "file", "version": "1"},
    }
    lines = [{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}]
    frames.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with frames.open("rb") as f:
        done = subprocess.run(
            [sys.executable, str(SERVER), str(tmp_path / "report.json")],
            stdin=f if stdin == "file" else subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr.decode()
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    if stdin == "file":
        assert [a["id"] for a in answers] == [1], done.stderr.decode()
        assert answers[0]["result"]["serverInfo"]["name"] == "transport"
    else:
        assert answers == []


def test_lines_are_the_same_however_the_pipe_splits_them() -> None:
    """Frames cut anywhere by the pipe's reads (mid-line, mid-character, many lines in one
    read, a last line without its newline) come out as the same lines, decoded as the SDK's
    text layer decodes them."""
    rnd = random.Random(7)

    async def lines_of(data: bytes, cuts: list[int]) -> list[str]:
        reader = asyncio.StreamReader()

        async def feed() -> None:
            pos = 0
            for cut in [*cuts, len(data)]:
                if cut > pos:
                    reader.feed_data(data[pos:cut])
                pos = cut
                await asyncio.sleep(0)  # the next read sees only what has arrived
            reader.feed_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            return [line async for line in _Lines(reader)]

    async def go() -> None:
        for _ in range(2000):
            data = bytes(rnd.choice(b"ab\n\xc3\xa9\xff") for _ in range(rnd.randint(0, 40)))
            cuts = sorted(rnd.sample(range(len(data) + 1), min(len(data), rnd.randint(0, 8))))
            *whole, last = data.split(b"\n")
            want = [line.decode("utf-8", "replace") + "\n" for line in whole]
            want += [last.decode("utf-8", "replace")] if last else []
            assert await lines_of(data, cuts) == want, (data, cuts)

    anyio.run(go)

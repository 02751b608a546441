"""The agent's stdio for the MCP gateway: the ``mcp`` SDK's ``stdio_server``, fed by the
event loop instead of worker threads.

Why: the SDK's transport reads and writes stdin and stdout through ``anyio.wrap_file``, so
every frame costs thread hops — one to read a line, two to write an answer (the write,
then the flush) — each a wake-up of another thread and a hand-over of the GIL, on every
``tools/call`` (docs/architecture.md, "MCP gateway"). When both are pipes or sockets (how
an MCP client launches a server), they are read and written here as non-blocking pipes on
the event loop, and handed to ``stdio_server`` as its ``stdin`` and ``stdout``: the SDK
still parses every line, serializes every answer and owns the streams the server reads.

The standard descriptors are claimed first exactly as ``stdio_server`` claims them (fd 0
then points at the null device and fd 1 at stderr, so stray output never reaches the
wire; both are put back on exit). Anything else — a terminal, a file, Windows, a
descriptor that cannot be claimed — takes the SDK's own transport unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

from mcp.server import stdio as sdk_stdio

__all__ = ["stdio_streams"]

_CHUNK = 1 << 16


def _pipe_like(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _Lines:
    """Lines of a non-blocking pipe, as text, as ``AsyncFile`` iteration yields them."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._partial: list[bytes] = []  # the line being read, in pieces (no copy per read)
        self._lines: deque[bytes] = deque()
        self._eof = False

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while not self._lines:
            if self._eof:
                raise StopAsyncIteration
            chunk = await self._reader.read(_CHUNK)
            if not chunk:
                self._eof = True
                if self._partial:  # a last line without its newline is still a line
                    self._lines.append(b"".join(self._partial))
                    self._partial = []
                continue
            first, *rest = chunk.split(b"\n")
            self._partial.append(first)
            if rest:
                self._lines.append(b"".join(self._partial) + b"\n")
                *whole, tail = rest
                self._lines.extend(line + b"\n" for line in whole)
                self._partial = [tail] if tail else []
        # As the SDK's text layer decodes: UTF-8, a bad byte replaced, never an error.
        return self._lines.popleft().decode("utf-8", errors="replace")


class _Writer:
    """A non-blocking pipe as the ``AsyncFile`` the SDK writes each frame to."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))
        await self._writer.drain()  # waits only while the reader lags: backpressure

    async def flush(self) -> None:
        return None  # nothing is buffered here: each write went to the pipe


@contextlib.asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[Any, Any]]:
    """(read, write) streams of this process's stdio, as ``stdio_server()`` yields them."""
    claimed = _claim() if sys.platform != "win32" and _pipe_like(0) and _pipe_like(1) else None
    if claimed is None:
        async with sdk_stdio.stdio_server() as streams:
            yield streams
        return
    fds, releases = claimed
    async with contextlib.AsyncExitStack() as stack:
        stack.push(releases)  # runs last: the wire goes back once the transports are closed
        lines, out = await _open(stack, *fds)
        streams = await stack.enter_async_context(
            sdk_stdio.stdio_server(stdin=cast(Any, lines), stdout=cast(Any, out))
        )
        yield streams


def _claim() -> tuple[tuple[int, int], contextlib.ExitStack] | None:
    """Claim fd 0 and fd 1 as ``stdio_server`` claims them: (the wire's descriptors, their
    release). ``None`` (nothing held) when either is served in place from a ``sys`` stream
    that is not the descriptor (the SDK's transport then serves that stream itself)."""
    releases = contextlib.ExitStack()
    try:
        wire = []
        for fd, stream, mode, divert in (
            (0, sys.stdin, "rb", sdk_stdio._open_stdin_diversion),
            (1, sys.stdout, "wb", sdk_stdio._open_stdout_diversion),
        ):
            buffer, release = sdk_stdio._claim_fd(fd, stream, mode, divert)  # type: ignore[arg-type]
            if release is None:
                releases.close()
                return None
            releases.callback(release)
            wire.append(buffer.fileno())
    except BaseException:
        releases.close()
        raise
    return (wire[0], wire[1]), releases


async def _open(stack: contextlib.AsyncExitStack, in_fd: int, out_fd: int) -> tuple[_Lines, _Writer]:
    """Pipe transports on copies of the wire's descriptors (a transport closes its own
    copy; the claim keeps its duplicate for the release). Blocking mode, which the wire
    shares with whoever else holds it, is put back on exit."""
    loop = asyncio.get_running_loop()
    for fd in (in_fd, out_fd):
        if os.get_blocking(fd):
            stack.callback(_set_blocking, fd)
    reader = asyncio.StreamReader(limit=_CHUNK, loop=loop)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(os.dup(in_fd), "rb", buffering=0)
    )
    stack.callback(read_transport.close)
    write_transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(os.dup(out_fd), "wb", buffering=0)
    )
    stack.callback(write_transport.close)
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
    return _Lines(reader), _Writer(writer)


def _set_blocking(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.set_blocking(fd, True)

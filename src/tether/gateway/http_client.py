"""The HTTP gateway's client to its upstreams: HTTP/1.1 keep-alive on asyncio, parsed by httptools.

A forwarded request is one write (head and a small body together) on a pooled
connection, and the response is parsed in the protocol's ``data_received`` by the same
C parser the gateway's server side uses. This replaces ``httpx.AsyncClient`` on the
gateway's hot path: profiled under 16 concurrent clients, httpx and httpcore took about
60% of a proxy-only gateway's CPU per request (their pool scans every connection with a
``poll(2)`` per request, and each read and write passes through several stream layers),
more than the decision itself.

What it does and does not do:

- One request at a time per connection (no pipelining); idle connections are kept per
  origin, newest first, for :data:`KEEPALIVE_SECONDS` (under the 5 s keep-alive of common
  servers, so a connection is not reused just as the server closes it).
- ``max_connections`` bounds the open connections over all origins; a request waits for
  a free one up to the read timeout.
- Bodies are passed through as bytes: no content decoding, no default headers added
  (the agent's own ``Accept-Encoding`` and ``User-Agent`` go through as it sent them).
- A request that fails on a reused connection before any byte of an answer came back
  (the server closed it while idle) is sent once more on a new connection, but only
  when it is idempotent and its body was not streamed (RFC 9110 §9.2.2).
- Interim ``1xx`` answers are skipped; a ``HEAD`` answer has no body and its connection
  is not reused (the parser cannot be told that no body follows).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

#: Idle connections older than this are closed rather than reused.
KEEPALIVE_SECONDS = 4.0
#: Response bytes buffered before the connection stops reading (flow control).
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Methods whose empty body is still sent with ``content-length: 0`` (some servers insist).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UpstreamError(Exception):
    """The exchange with the upstream failed."""


class UpstreamUnavailable(UpstreamError):
    """No answer: the connection could not be made, or closed before a response head."""


class UpstreamTimeout(UpstreamError):
    """Connecting, waiting for a free connection, sending or waiting for bytes took too long."""


class UpstreamBroken(UpstreamError):
    """The answer started but was cut off or malformed."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one route's requests go: scheme, host, port, the ``Host`` header and a base path."""

    scheme: str
    host: str
    port: int
    host_header: bytes
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == default else f"{shown}:{port}"
        return cls(scheme, host, port, header.encode("idna"), parts.path.rstrip("/"))


def _timed_out(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout())


class _Connection(asyncio.Protocol):
    """One connection and the state of the exchange on it (parser callbacks fill it in)."""

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False
        self.lost = False
        self.failed = False  # the answer was malformed or unsolicited
        self.expecting = False
        self.received = False
        self.head_request = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.until_close = False  # no framing: the body ends when the connection does
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.idle_since = 0.0

    def begin(self, head_request: bool) -> None:
        self.expecting, self.received, self.head_request = True, False, head_request
        self.status, self.headers, self.head_done, self.complete = 0, [], False, False
        self.keep_alive = self.until_close = False
        self.body.clear()
        self.buffered = 0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        if not self.expecting:  # bytes nobody asked for: the connection is out of step
            self._fail()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; ``connection_lost`` follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.expecting and self.head_done and self.until_close and not self.failed:
            self.complete, self.expecting = True, False
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # (after the head: trailers, which are not relayed)
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if not self.expecting or self.head_done:  # a second answer to one request
            self._fail()
            return
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self.headers = []
            return
        self.status, self.head_done = status, True
        self.keep_alive = self.parser.should_keep_alive() and not self.head_request
        if self.head_request:
            self.complete, self.expecting = True, False
        elif status not in (204, 304):
            framed = False
            for k, v in self.headers:
                name = k.lower()
                if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in v.lower()):
                    framed = True
                    break
            self.until_close = not framed
            if self.until_close:
                self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if not self.expecting:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head_done and self.expecting:
            self.complete, self.expecting = True, False

    # -- the exchange -----------------------------------------------------------------------

    def _fail(self) -> None:
        self.failed, self.keep_alive = True, False
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until the protocol has news (bytes, end, loss, writable), at most ``timeout``."""
        fut = self.loop.create_future()
        self.waiter = fut
        timer = self.loop.call_later(timeout, _timed_out, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self.waiter = None

    def write(self, data: bytes) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise UpstreamUnavailable("the upstream closed the connection")
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        while self.write_paused and not self.lost:
            await self.wait(timeout)

    def close(self) -> None:
        self.expecting = False
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """An answer whose head is in; the body is read with :meth:`chunks` (or is already whole)."""

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool, self._conn = pool, conn
        self.status = conn.status
        self.headers = conn.headers
        self._released = False

    @property
    def complete(self) -> bool:
        """The whole body has arrived (typical for a small answer): :meth:`read_buffered` has it."""
        return self._conn.complete

    def read_buffered(self) -> bytes:
        conn = self._conn
        data = b"".join(conn.body)
        conn.body.clear()
        conn.buffered = 0
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (de-chunked, not decoded)."""
        conn, timeout = self._conn, self._pool.timeout
        while True:
            while conn.body:
                chunk = conn.body.popleft()
                conn.buffered -= len(chunk)
                if conn.read_paused and conn.buffered < _LOW_WATER and conn.transport is not None:
                    conn.read_paused = False
                    conn.transport.resume_reading()
                yield chunk
            if conn.complete:
                return
            if conn.lost or conn.failed:
                raise UpstreamBroken("the upstream cut its answer short")
            try:
                await conn.wait(timeout)
            except UpstreamTimeout:
                raise UpstreamBroken("the upstream stopped sending its answer") from None

    def release(self) -> None:
        """Give the connection back (kept only after a whole, keep-alive answer)."""
        if not self._released:
            self._released = True
            self._pool._release(self._conn)


class UpstreamPool:
    """Keep-alive connections to the upstreams of one gateway (one event loop)."""

    def __init__(self, *, max_connections: int, connect_timeout: float, timeout: float) -> None:
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = None

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections belong to the loop that opened them (a test client may run a
            # new loop): those of another loop are forgotten, not reused.
            self._idle, self._open, self._waiters, self._loop = {}, 0, deque(), loop
        return loop

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None = None,
        stream: AsyncIterator[bytes] | None = None,
        length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request and wait for the head of its answer.

        ``body``: the whole body (or ``None``); ``stream``: chunks sent after ``body`` as
        they come, framed by ``length`` when known, else chunked.
        """
        loop = self._bind()
        head = _request_head(method, target, origin.host_header, headers, body, stream, length)
        replayable = stream is None and method in _REPLAYABLE
        for attempt in (0, 1):
            conn, reused = await self._acquire(loop, origin)
            try:
                conn.begin(head_request=method == "HEAD")
                if stream is None:
                    conn.write(head + body if body else head)
                else:
                    await self._send_stream(conn, head, body, stream, length is None)
                while not conn.head_done:
                    if conn.lost or conn.failed:
                        raise UpstreamUnavailable("the upstream closed the connection without answering")
                    await conn.wait(self.timeout)
            except UpstreamUnavailable:
                self._drop(conn)
                if attempt == 0 and reused and replayable and not conn.received:
                    continue  # closed while idle: the request never reached the server
                raise
            except BaseException:
                self._drop(conn)
                raise
            return UpstreamResponse(self, conn)
        raise AssertionError("unreachable")

    async def _send_stream(
        self, conn: _Connection, head: bytes, first: bytes | None, stream: AsyncIterator[bytes], chunked: bool
    ) -> None:
        def framed(chunk: bytes) -> bytes:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk

        conn.write(head + framed(first) if first else head)
        async for chunk in stream:
            if conn.lost or conn.failed:
                break  # the upstream gave up (its answer, if any, is read next)
            if chunk:
                conn.write(framed(chunk))
                await conn.drain(self.timeout)
        if chunked and not conn.lost:
            conn.write(b"0\r\n\r\n")

    async def _acquire(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> tuple[_Connection, bool]:
        while True:
            idle = self._idle.get(origin)
            now = loop.time()
            while idle:
                conn = idle.pop()
                if conn.lost or conn.failed or now - conn.idle_since > KEEPALIVE_SECONDS:
                    self._discard(conn)
                    continue
                return conn, True
            if self._open < self.max_connections or self._close_one_idle():
                break
            fut = loop.create_future()
            self._waiters.append(fut)
            timer = loop.call_later(self.timeout, _timed_out, fut)
            try:
                await fut
            finally:
                timer.cancel()
                if fut in self._waiters:
                    self._waiters.remove(fut)
        self._open += 1
        try:
            return await self._connect(loop, origin), False
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> _Connection:
        tls: dict[str, Any] = {}
        if origin.scheme == "https":
            if self._ssl is None:
                import httpx  # the same trust store the rest of tether's clients use

                self._ssl = httpx.create_ssl_context(trust_env=False)
            tls = {"ssl": self._ssl, "server_hostname": origin.host}
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(origin, loop), origin.host, origin.port, **tls),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamTimeout("connecting to the upstream took too long") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(f"cannot connect to the upstream: {exc}") from None
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.complete and conn.keep_alive and not conn.lost and not conn.failed and not conn.body:
            conn.expecting = False
            conn.idle_since = conn.loop.time()
            self._idle.setdefault(conn.origin, []).append(conn)
            self._wake_one()
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1

    def _close_one_idle(self) -> bool:
        """Make room by closing an idle connection of another origin (oldest first)."""
        for idle in self._idle.values():
            if idle:
                self._discard(idle.pop(0))
                return True
        return False

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle, self._open = {}, 0


def _request_head(
    method: str,
    target: str,
    host: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    stream: AsyncIterator[bytes] | None,
    length: int | None,
) -> bytes:
    parts = [method.encode("ascii"), b" ", target.encode("latin-1"), b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    if stream is not None:
        if length is None:
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            parts.append(b"content-length: %d\r\n" % length)
    elif body or method in _BODY_METHODS:
        parts.append(b"content-length: %d\r\n" % len(body or b""))
    parts.append(b"\r\n")
    return b"".join(parts)

"""The HTTP/1.1 connection handling of a broker: uvicorn's httptools protocol with bounds.

uvicorn alone closes a keep-alive connection only after a response; a connection that
never sends a byte, sends its headers one byte a minute, or stops half-way through its
body is held forever (slowloris). And what the parser refuses before the app runs (a bad
``Content-Length``, headers or a request target over the size limit) is answered in
plain text. Here:

* a request's headers must arrive within ``header_timeout`` of its first byte (of the
  connection, for the first request), else ``408 request_timeout`` and the connection
  closes; its body within ``body_timeout`` of the headers, else the connection closes;
* a request head still incomplete past ``max_header_bytes`` gets ``431
  headers_too_large`` (a head that arrives whole is measured again by the app,
  ``tether.server.app.HeaderLimit``, which also answers 414 for a long target);
* the server holds at most ``max_connections`` connections; one more gets
  ``503 too_many_connections`` and is closed at once;
* protocol errors are JSON (``400 malformed_http``).

Idle keep-alive connections are closed by uvicorn after ``timeout_keep_alive``.

The parser is httptools (llhttp, in C; a required dependency): per request it costs a
fraction of h11's pure Python, which this server ran before and which was most of what the
HTTP layer added to a decision (docs/architecture.md, "Hot path").
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Longest path plus query string a request may have (no route needs more than a few hundred).
MAX_TARGET_BYTES = 8192
STATUS_TEXT = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def raw_json_response(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response written straight to the socket (no parser state needed)."""
    body = json.dumps({"code": code, "message": message}).encode()
    reason = STATUS_TEXT.get(status, b"Service Unavailable")
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, reason, len(body))
    )
    return head + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 5.0
    body_timeout: float = 30.0
    max_connections: int = 512
    max_header_bytes: int = 16 * 1024
    _read_timer: asyncio.TimerHandle | None = None
    _phase = ""  # "headers" or "body" while a read deadline is armed
    _in_head = True  # between requests or inside a request's head
    _head_bytes = 0

    # -- deadlines, driven by the parser's callbacks ----------------------------------
    def _arm(self, phase: str, seconds: float) -> None:
        if self._phase == phase:
            return  # the deadline runs from the start of the phase, not from the last byte
        self._disarm()
        self._phase = phase
        self._read_timer = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer, self._phase = None, ""

    def _expired(self, phase: str) -> None:
        self._read_timer, self._phase = None, ""
        if self.transport.is_closing():
            return
        between_requests = self.cycle is None or self.cycle.response_complete
        if phase == "headers" and between_requests:
            self.transport.write(
                raw_json_response(408, "request_timeout", "the request headers did not arrive in time")
            )
        self.transport.close()

    # -- protocol hooks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(
                raw_json_response(503, "too_many_connections", "the broker holds too many connections; retry")
            )
            transport.close()
            return
        # A connection that never sends a byte is on the headers clock from its first moment.
        self._arm("headers", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a read that completes the head also carries the start of
        # the body, which is not head bytes. A head still incomplete is over the bound.
        over = self._head_bytes > self.max_header_bytes + 8192  # + request line and framing
        if self._in_head and over and not self.transport.is_closing():
            self.transport.write(
                raw_json_response(431, "headers_too_large", "the request line or headers are too large")
            )
            self.transport.close()

    def on_message_begin(self) -> None:
        self._arm("headers", self.header_timeout)  # a request's first byte (kept for the first)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._disarm()
        super().on_headers_complete()
        self._arm("body", self.body_timeout)  # disarmed at once when there is none

    def on_message_complete(self) -> None:
        self._in_head = True
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # httptools refuses a target over 64 KiB as a parse error; shorter ones past the
        # limit reach the app, which answers the same 414.
        if len(getattr(self, "url", b"")) > MAX_TARGET_BYTES:
            out = raw_json_response(
                414, "request_target_too_long", f"the request target exceeds {MAX_TARGET_BYTES} bytes"
            )
        else:
            out = raw_json_response(400, "malformed_http", "malformed HTTP request; send HTTP/1.1")
        self.transport.write(out)
        self.transport.close()


def bounded_protocol(
    *, header_timeout: float, body_timeout: float, max_connections: int, max_header_bytes: int = 16 * 1024
) -> type[BoundedHttpToolsProtocol]:
    """A protocol class with these bounds (uvicorn builds one instance per connection)."""
    return type(
        "TetherHttpProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
            "max_header_bytes": max_header_bytes,
        },
    )

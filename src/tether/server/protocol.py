"""The HTTP/1.1 connection handling of a broker: uvicorn's h11 protocol with bounds.

uvicorn alone closes a keep-alive connection only after a response; a connection that
never sends a byte, sends its headers one byte a minute, or stops half-way through its
body is held forever (slowloris). And what h11 refuses before the app runs (a bad
``Content-Length``, headers or a request target over the size limit) is answered in
plain text. Here:

* a request's headers must arrive within ``header_timeout`` of its first byte (of the
  connection, for the first request), else ``408 request_timeout`` and the connection
  closes; its body within ``body_timeout`` of the headers, else the connection closes;
* the server holds at most ``max_connections`` connections; one more gets
  ``503 too_many_connections`` and is closed at once;
* protocol errors are JSON (``400 malformed_http``, ``431 headers_too_large``).

Idle keep-alive connections are closed by uvicorn after ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

STATUS_TEXT = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def raw_json_response(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response written straight to the socket (no h11 state needed)."""
    body = json.dumps({"code": code, "message": message}).encode()
    reason = STATUS_TEXT.get(status, b"Service Unavailable")
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, reason, len(body))
    )
    return head + body


class BoundedH11Protocol(H11Protocol):
    header_timeout: float = 5.0
    body_timeout: float = 30.0
    max_connections: int = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._phase = ""  # "headers" or "body" while a read deadline is armed
        self._protocol_error: h11.RemoteProtocolError | None = None
        next_event = self.conn.next_event

        def remember_error() -> Any:
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error = exc
                raise

        self.conn.next_event = remember_error  # type: ignore[method-assign]

    # -- deadlines ---------------------------------------------------------------------
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

    def _track(self) -> None:
        """Arm or clear the read deadline for where the client now is in its request."""
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._arm("body", self.body_timeout)
        elif state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            if self.conn.trailing_data[0] or self._phase == "headers":
                self._arm("headers", self.header_timeout)
        else:
            self._disarm()

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
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        error = self._protocol_error
        if error is not None and error.error_status_hint == 431:
            out = raw_json_response(431, "headers_too_large", "the request line or headers are too large")
        else:
            why = str(error) if error is not None else msg
            out = raw_json_response(400, "malformed_http", f"malformed HTTP request: {why[:200]}")
        self.transport.write(out)
        self.transport.close()


def bounded_protocol(
    *, header_timeout: float, body_timeout: float, max_connections: int
) -> type[BoundedH11Protocol]:
    """A protocol class with these bounds (uvicorn builds one instance per connection)."""
    return type(
        "TetherH11Protocol",
        (BoundedH11Protocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout, "max_connections": max_connections},
    )

"""The HTTP/1.1 server protocol the gateways run on (httptools, bounded), and uvloop.

(The broker's own server runs ``tether.server.protocol``: httptools with header/body
deadlines and a connection cap.)

uvicorn's httptools protocol parses several times faster than h11, but unlike h11 it
puts no bound on a request head that arrives in pieces (h11's
``max_incomplete_event_size``). This subclass counts the bytes of each request head as
they arrive and answers 431 once they pass ``max_header_bytes``, so a client that
streams an endless header costs a bounded amount of memory. ``uvicorn_options`` is what
the gateways pass to ``uvicorn.Config``; without it uvicorn would pick plain httptools.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

from uvicorn.protocols.http.h11_impl import H11Protocol

T = TypeVar("T")

_HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
_HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None

_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: 68\r\n\r\n"
    b'{"code":"headers_too_large","message":"request headers are too large"}'
)


def bounded_httptools(max_header_bytes: int) -> type[asyncio.Protocol]:
    """An httptools protocol class that refuses request heads over ``max_header_bytes``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpTools(HttpToolsProtocol):
        _in_head = True
        _head_bytes = 0

        def data_received(self, data: bytes) -> None:
            if not self._in_head:
                super().data_received(data)
                return
            self._head_bytes += len(data)
            super().data_received(data)
            # Checked after parsing: a read that completes the head also carries the start
            # of the body, which is not head bytes. A head still incomplete is over the bound.
            over = self._head_bytes > max_header_bytes + 8192  # + request line and framing
            if self._in_head and over and not self.transport.is_closing():
                self.transport.write(_431)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True
            super().on_message_complete()

    return BoundedHttpTools


def uvicorn_options(max_header_bytes: int) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments: the parser (and its bound) for every server."""
    if _HAVE_HTTPTOOLS:
        return {"http": bounded_httptools(max_header_bytes)}
    return {"http": H11Protocol, "h11_max_incomplete_event_size": max_header_bytes}


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed (a faster loop, same semantics)."""
    if _HAVE_UVLOOP:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)

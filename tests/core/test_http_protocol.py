"""The gateways' httptools server protocol keeps h11's bound on request heads (16 KiB by default)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from tether.server.app import create_app
from tether.server.http_protocol import uvicorn_options


@pytest.fixture
def served(runtime) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    opts = uvicorn_options(runtime.settings.limits.max_header_bytes)
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), log_level="error", **opts))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        with contextlib.suppress(OSError):
            sock.close()


def test_normal_request_is_answered(served):
    """An ordinary request goes through the bounded protocol unchanged."""
    r = httpx.get(f"http://127.0.0.1:{served}/healthz", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_endless_header_streamed_in_pieces_is_cut_off(served):
    """A head that never ends (slowloris-style, sent in small writes) gets 431 and a closed socket."""
    with socket.create_connection(("127.0.0.1", served), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
        answer = b""
        for _ in range(200):  # 200 × 1 KiB: well past the 16 KiB bound
            try:
                s.sendall(b"a" * 1024)
            except OSError:
                break
        with contextlib.suppress(OSError):
            while chunk := s.recv(4096):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431")

"""Slowloris and what the HTTP parser refuses, against a real broker process over real
sockets: idle and slow connections are closed in bounded time, refusals are JSON."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time

import pytest

from tether.testing import broker_process

BOUNDS = """
[limits]
header_timeout_seconds = 2
body_timeout_seconds = 2
keepalive_seconds = 1
max_connections = 16
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory, domain):
    with broker_process(tmp_path_factory.mktemp("slow") / "state", domain, config_extra=BOUNDS) as b:
        yield ("127.0.0.1", int(b.url.rsplit(":", 1)[1])), b


def _connect(addr) -> socket.socket:
    s = socket.create_connection(addr)
    s.settimeout(20)  # far above every bound: a hang fails the test instead of stalling it
    return s


def _read_until_closed(s: socket.socket) -> tuple[bytes, float]:
    t0, out = time.monotonic(), b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return out, time.monotonic() - t0


def _json_error(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw[:300]
    return int(head.split()[1]), json.loads(body)["code"]


def test_idle_connection_is_closed_in_bounded_time(broker):
    """A connection that never sends a byte is answered 408 and closed (was held forever)."""
    addr, _ = broker
    raw, took = _read_until_closed(_connect(addr))
    print(f"\nidle connection closed after {took:.2f} s (header_timeout_seconds = 2)")
    assert _json_error(raw) == (408, "request_timeout")
    assert took < 10


def test_slowloris_headers_are_cut_off(broker):
    """Headers trickled in and never finished: 408 after the header timeout, not never."""
    addr, _ = broker
    s = _connect(addr)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    s.sendall(b"X-Slow: 1\r\n")
    raw, took = _read_until_closed(s)
    assert _json_error(raw) == (408, "request_timeout") and took < 10


def test_slow_body_is_cut_off(broker, domain):
    """A body that stops half-way is not waited for forever: the connection closes."""
    addr, b = broker
    svid = domain.svid("orchestrator", b.audience)
    s = _connect(addr)
    s.sendall(
        b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + svid.encode() + b"\r\nContent-Length: 500\r\n\r\n{"
    )
    _, took = _read_until_closed(s)
    assert took < 10


def test_idle_keep_alive_is_closed(broker):
    """After a response, an idle keep-alive connection is closed after keepalive_seconds."""
    addr, _ = broker
    s = _connect(addr)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    raw, took = _read_until_closed(s)
    assert raw.startswith(b"HTTP/1.1 200") and took < 10


@pytest.mark.parametrize(
    "request_bytes, expected",
    [
        (b"POST /v1/authorize HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", (400, "malformed_http")),
        (
            b"POST /v1/authorize HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            (400, "malformed_http"),
        ),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", (414, "request_target_too_long")),
        (
            b"GET /healthz?" + b"q=1&" * 25_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            (414, "request_target_too_long"),
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", (400, "malformed_http")),
    ],
    ids=["bad_content_length", "two_content_lengths", "100kb_target", "100kb_query", "garbage"],
)
def test_parser_refusals_are_json(broker, request_bytes, expected):
    """What the HTTP parser refuses before the app runs is a JSON error with a code."""
    addr, _ = broker
    s = _connect(addr)
    s.sendall(request_bytes)
    raw, _ = _read_until_closed(s)
    assert _json_error(raw) == expected


def test_split_oversized_headers_are_431_json(broker):
    """Oversized headers sent in pieces (the parser's own bound) are a JSON 431."""
    addr, _ = broker
    s = _connect(addr)
    # Stop sending once the broker has answered: writing to a closed peer would reset the
    # connection and could discard the answer before it is read.
    with contextlib.suppress(OSError):
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(40):
            if select.select([s], [], [], 0.05)[0]:
                break
            s.sendall(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000))
        else:
            s.sendall(b"\r\n")
    raw, _ = _read_until_closed(s)
    assert _json_error(raw) == (431, "headers_too_large")


def test_connections_past_the_cap_get_503(broker):
    """Past `max_connections` open connections, a new one gets a JSON 503 and is closed."""
    addr, _ = broker
    held = [_connect(addr) for _ in range(16)]
    try:
        raw, took = _read_until_closed(_connect(addr))
        assert _json_error(raw) == (503, "too_many_connections") and took < 5
    finally:
        for s in held:
            s.close()

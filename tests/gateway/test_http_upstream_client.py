"""The HTTP gateway's upstream client (``tether.gateway.http_client``), served as in production.

The gateway runs under uvicorn on its production parser and loop (httptools, uvloop) in
front of real upstreams: the recording upstream process, and small socket servers that
misbehave in the ways a real upstream can (a kept connection dropped, a garbled answer).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from _tls import Ca, trusting
from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.http import HttpGateway
from tether.gateway.routes import parse_routes
from tether.server.http_protocol import uvicorn_options

READ = {"action": "http:read", "resource": "tickets.queue"}
COMMENT = {"action": "http:write", "resource": "tickets.comment"}

ROUTES = """
[gateway]
timeout_seconds = 5.0
max_request_bytes = 4194304
max_response_bytes = 4194304

[[routes]]
prefix = "/tickets"
upstream = "{up}"
service = "tickets"
  [[routes.rules]]
  method = ["GET", "HEAD"]
  path = "/{{name}}"
  action = "http:read"
  resource = "tickets.queue"
  [[routes.rules]]
  method = "POST"
  path = "/comments/{{ticket_id}}"
  action = "http:write"
  resource = "tickets.comment"
"""


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread, with the gateways' server options (and uvloop)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, **uvicorn_options(16 * 1024)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def gateway_for(runtime: Any, upstream_url: str) -> HttpGateway:
    table = parse_routes(tomllib.loads(ROUTES.format(up=upstream_url)), "routes.toml")
    table.check_catalog(runtime.catalog)
    return HttpGateway(table, LocalAuthorizer(runtime))


@pytest.fixture
def gw(runtime, upstream, credentials) -> Iterator[str]:
    upstream.reset()
    with served(gateway_for(runtime, upstream.url)) as url:
        yield url


def token(agent: Any, scope: Any = (READ,)) -> str:
    r = agent.open(list(scope), intent="support.triage")
    assert r.status_code == 201, r.text
    return str(r.json()["task_token"])


def test_keep_alive_connection_reused(gw, agent, upstream):
    """Sequential calls go over one kept upstream connection, not a new one each."""
    auth = {"Authorization": f"Bearer {token(agent)}"}
    with httpx.Client(base_url=gw, headers=auth) as c:
        for _ in range(5):
            assert c.get("/tickets/queue").status_code == 200
    ports = {s["client_port"] for s in upstream.seen()}
    assert len(upstream.seen()) == 5 and len(ports) == 1


def test_concurrent_calls_each_get_their_own_answer(gw, agent, upstream):
    """Calls in flight together never receive each other's answers (one call per connection)."""
    import asyncio

    auth = {"Authorization": f"Bearer {token(agent)}"}

    async def main() -> list[tuple[str, Any]]:
        async with httpx.AsyncClient(base_url=gw, headers=auth) as c:
            names = [f"n{i}" for i in range(24)]
            got = await asyncio.gather(*(c.get(f"/tickets/{n}") for n in names))
            return [(n, r.json()["path"]) for n, r in zip(names, got, strict=True)]

    for name, path in asyncio.run(main()):
        assert path == f"/{name}"


def test_large_streamed_request_body_reaches_upstream_whole(gw, agent, upstream):
    """A chunked request body larger than the buffered size is streamed upstream in full."""
    auth = {"Authorization": f"Bearer {token(agent, [READ, COMMENT])}"}

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"z" * 8192

    r = httpx.post(f"{gw}/tickets/comments/T-1", headers=auth, content=chunks())
    assert r.status_code == 200, r.text
    (seen,) = upstream.seen()
    assert seen["body_bytes"] == 40 * 8192
    assert seen["headers"].get("transfer-encoding") == "chunked"


def test_request_body_with_length_forwarded_with_length(gw, agent, upstream):
    """A body the agent sent with a length goes upstream with that length (not re-chunked)."""
    auth = {"Authorization": f"Bearer {token(agent, [READ, COMMENT])}"}
    for size in (10, 300_000):
        r = httpx.post(f"{gw}/tickets/comments/T-1", headers=auth, content=b"q" * size)
        assert r.status_code == 200, r.text
    small, large = upstream.seen()
    assert (small["body_bytes"], small["headers"]["content-length"]) == (10, "10")
    assert (large["body_bytes"], large["headers"]["content-length"]) == (300_000, "300000")
    assert "transfer-encoding" not in large["headers"]


def test_large_and_chunked_answers_relayed_whole(gw, agent, upstream):
    """Answers bigger than the read buffer, and chunked answers, arrive complete."""
    auth = {"Authorization": f"Bearer {token(agent)}"}
    with httpx.Client(base_url=gw, headers=auth) as c:
        big = c.get("/tickets/big?n=1500000")
        assert big.status_code == 200 and big.content == b"x" * 1_500_000
        assert big.headers["content-length"] == "1500000"
        chunked = c.get("/tickets/chunks?n=300")
        assert chunked.status_code == 200 and chunked.content == b"c" * 300 * 1024
        assert c.get("/tickets/queue").json() == {"ok": True, "path": "/queue"}


def test_connection_close_answer_then_next_call_succeeds(gw, agent, upstream):
    """An upstream that closes after its answer is not reused: the next call opens anew."""
    auth = {"Authorization": f"Bearer {token(agent)}"}
    with httpx.Client(base_url=gw, headers=auth) as c:
        assert c.get("/tickets/close").status_code == 200
        assert c.get("/tickets/queue").status_code == 200
    first, second = upstream.seen()
    assert first["client_port"] != second["client_port"]


def test_head_answer_has_no_body_and_next_call_succeeds(gw, agent, upstream):
    """A HEAD answer carries the length but no body, and does not garble the next answer."""
    auth = {"Authorization": f"Bearer {token(agent)}"}
    with httpx.Client(base_url=gw, headers=auth) as c:
        head = c.head("/tickets/queue")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        assert c.get("/tickets/queue").json() == {"ok": True, "path": "/queue"}


class RawUpstream:
    """A socket server answering each request with what ``answer`` returns (``None``: close
    the connection without answering; ``close_after``: close after each answer); counts
    the requests it read."""

    def __init__(
        self,
        answer: Callable[[int, bytes], bytes | None],
        close_after: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.answer, self.close_after, self.tls = answer, close_after, tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        self.handshake_errors: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                self.handshake_errors.append(str(exc))
                conn.close()
                return
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                with self._lock:
                    self.requests.append(head)
                    n = len(self.requests)
                reply = self.answer(n, head)
                if reply is None:
                    return
                conn.sendall(reply)
                if self.close_after:
                    return

    def close(self) -> None:
        self.sock.close()


Answer = Callable[[int, bytes], bytes | None]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@pytest.fixture
def raw_gateway(runtime, credentials) -> Iterator[Callable[..., Any]]:
    servers: list[RawUpstream] = []
    stack = contextlib.ExitStack()

    def start(
        answer: Callable[[int, bytes], bytes | None],
        close_after: bool = False,
        tls: ssl.SSLContext | None = None,
        trust: ssl.SSLContext | None = None,
    ) -> tuple[RawUpstream, str]:
        up = RawUpstream(answer, close_after, tls)
        servers.append(up)
        app = gateway_for(runtime, up.url)
        if trust is not None:  # the trust store a deployment's own CA would be in
            app.pool._ssl = trust
        return up, stack.enter_context(served(app))

    with stack:
        yield start
    for up in servers:
        up.close()


def test_dropped_kept_connection_resent_for_idempotent_call(raw_gateway, agent):
    """A GET on a kept connection the upstream dropped unanswered is sent again on a new one."""
    up, gw = raw_gateway(lambda n, head: None if n == 2 else OK)
    with httpx.Client(base_url=gw, headers={"Authorization": f"Bearer {token(agent)}"}) as c:
        assert c.get("/tickets/queue").status_code == 200
        assert c.get("/tickets/queue").status_code == 200
    assert len(up.requests) == 3 and up.connections == 2


def test_dropped_kept_connection_not_resent_for_post(raw_gateway, agent):
    """A POST the upstream may have acted on is never sent twice: the agent gets a 502."""
    up, gw = raw_gateway(lambda n, head: None if n == 2 else OK)
    auth = {"Authorization": f"Bearer {token(agent, [READ, COMMENT])}"}
    with httpx.Client(base_url=gw, headers=auth) as c:
        assert c.post("/tickets/comments/T-1", content=b"{}").status_code == 200
        r = c.post("/tickets/comments/T-1", content=b"{}")
    assert (r.status_code, r.json()["code"]) == (502, "upstream_unavailable")
    assert len(up.requests) == 2


def test_garbled_answer_is_502(raw_gateway, agent):
    """An answer that is not HTTP is a 502 `upstream_unavailable`, nothing of it relayed."""
    _, gw = raw_gateway(lambda n, head: b"SMTP ready\r\n\r\n")
    r = httpx.get(f"{gw}/tickets/queue", headers={"Authorization": f"Bearer {token(agent)}"})
    assert (r.status_code, r.json()["code"]) == (502, "upstream_unavailable")
    assert "SMTP" not in r.text


def test_interim_answer_skipped(raw_gateway, agent):
    """A `100 Continue` before the real answer is not relayed as the answer."""
    _, gw = raw_gateway(lambda n, head: b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    r = httpx.get(f"{gw}/tickets/queue", headers={"Authorization": f"Bearer {token(agent)}"})
    assert (r.status_code, r.content) == (200, b"{}")


def test_answer_cut_short_is_not_relayed_as_complete(raw_gateway, agent):
    """An answer shorter than its stated length ends the agent's connection, never a clean 200."""
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"a" * 10
    _, gw = raw_gateway(lambda n, head: cut, close_after=True)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{gw}/tickets/queue", headers={"Authorization": f"Bearer {token(agent)}"}).read()


def _server_tls(ca: Ca, tmp_path: Any) -> ssl.SSLContext:
    cert, key = ca.issue("127.0.0.1", server=True)
    (tmp_path / "up.pem").write_bytes(cert)
    (tmp_path / "up.key").write_bytes(key)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "up.pem", tmp_path / "up.key")
    return tls


def test_https_upstream_answers_over_kept_tls_connection(raw_gateway, agent, tmp_path):
    """An https upstream with a trusted certificate is reached over TLS, the connection kept."""
    ca = Ca("deployment")
    up, gw = raw_gateway(lambda n, head: OK, tls=_server_tls(ca, tmp_path), trust=trusting(ca))
    with httpx.Client(base_url=gw, headers={"Authorization": f"Bearer {token(agent)}"}) as c:
        for _ in range(3):
            r = c.get("/tickets/queue")
            assert (r.status_code, r.content) == (200, b"{}")
    assert len(up.requests) == 3 and up.connections == 1
    assert up.requests[0].split(b"\r\n")[1] == f"host: {up.url.removeprefix('https://')}".encode()


def test_upstream_with_untrusted_certificate_is_502(raw_gateway, agent, tmp_path):
    """An https upstream whose certificate no trusted CA signed gets no request: 502."""
    up, gw = raw_gateway(lambda n, head: OK, tls=_server_tls(Ca("not trusted"), tmp_path))
    assert up.url.startswith("https://")
    r = httpx.get(f"{gw}/tickets/queue", headers={"Authorization": f"Bearer {token(agent)}"})
    assert (r.status_code, r.json()["code"]) == (502, "upstream_unavailable")
    assert up.requests == []

"""The HTTP gateway in front of a real upstream process, authorizing in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import jwt
import pytest
from starlette.testclient import TestClient

from tether.audit.chain import capture_events
from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.http import HttpGateway
from tether.gateway.routes import parse_routes

from .conftest import FAKE_JWT, FAKE_SECRET

ROUTES = """
[gateway]
timeout_seconds = 1.0
max_request_bytes = 4096
max_response_bytes = 8192
retry_after_seconds = 7

[[routes]]
prefix = "/tickets"
upstream = "{up}"
service = "tickets"
  [[routes.rules]]
  method = "GET"
  path = "/queue"
  action = "http:read"
  resource = "tickets.queue"
  [[routes.rules]]
  method = "GET"
  path = "/{{name}}"
  action = "http:read"
  resource = "tickets.queue"
  [[routes.rules]]
  method = "POST"
  path = "/comments/{{ticket_id}}"
  action = "http:write"
  resource = "tickets.comment"

[[routes]]
prefix = "/slack"
upstream = "{up}"
service = "slack-external"
  [[routes.rules]]
  method = "POST"
  path = "/post"
  action = "send"
  resource = "slack-external.post"

[[routes]]
prefix = "/billing"
upstream = "{up}"
service = "billing"
  [[routes.rules]]
  method = "POST"
  path = "/refund/{{ticket_id}}"
  action = "tool:call"
  resource = "billing.refund"

[[routes]]
prefix = "/dead"
upstream = "http://127.0.0.1:9"
service = "tickets"
  [[routes.rules]]
  method = "GET"
  path = "/queue"
  action = "http:read"
  resource = "tickets.queue"
"""

READ = {"action": "http:read", "resource": "tickets.queue"}
COMMENT = {"action": "http:write", "resource": "tickets.comment"}


def routes_for(upstream: Any) -> Any:
    import tomllib

    return parse_routes(tomllib.loads(ROUTES.format(up=upstream.url)), "routes.toml")


@pytest.fixture
def gateway(runtime, upstream, credentials) -> Iterator[TestClient]:
    upstream.reset()
    table = routes_for(upstream)
    table.check_catalog(runtime.catalog)
    app = HttpGateway(table, LocalAuthorizer(runtime))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def token(agent, scope=(READ,), intent="support.triage") -> str:
    r = agent.open(list(scope), intent=intent)
    assert r.status_code == 201, r.text
    return str(r.json()["task_token"])


def auth(tok: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}", **extra}


def test_allowed_request_forwarded_with_minted_jwt(gateway, agent, upstream, credentials):
    """An allowed GET reaches the upstream carrying the jwt connector's access token."""
    r = gateway.get("/tickets/queue", headers=auth(token(agent)))
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "path": "/queue"}
    (seen,) = upstream.seen()
    scheme, _, minted = seen["headers"]["authorization"].partition(" ")
    assert scheme == "Bearer" and minted
    if credentials == "real":  # a tether access token for this one service and this task
        claims = jwt.decode(minted, options={"verify_signature": False})
        assert claims["aud"] == "tickets" and claims["sub"] == agent.spiffe_id
    else:
        assert minted == f"{FAKE_JWT}tickets"


def test_agent_token_never_reaches_upstream(gateway, agent, upstream):
    """The agent's task token is in no header the upstream receives, on any connector."""
    tok = token(agent)
    gateway.get("/tickets/queue", headers=auth(tok, **{"X-Copy": "x"}))
    tok2 = token(agent, [{"action": "send", "resource": "slack-external.post"}], "reporting.weekly")
    assert gateway.post("/slack/post", headers=auth(tok2), json={"text": "hi"}).status_code == 200
    seen = upstream.seen()
    assert len(seen) == 2
    for request in seen:
        assert not any(t in v for v in request["headers"].values() for t in (tok, tok2))


def test_inject_connector_header_reaches_upstream_not_agent(gateway, agent, upstream):
    """An inject credential is set on the upstream request and never echoed to the agent."""
    tok = token(agent, [{"action": "send", "resource": "slack-external.post"}], "reporting.weekly")
    r = gateway.post("/slack/post", headers=auth(tok), json={"text": "weekly report"})
    assert r.status_code == 200
    (seen,) = upstream.seen()
    assert seen["headers"]["x-api-key"] == FAKE_SECRET
    assert "authorization" not in seen["headers"]
    assert FAKE_SECRET not in r.text and FAKE_SECRET not in json.dumps(dict(r.headers))


def test_out_of_scope_denied_403_with_decision_id(gateway, agent, upstream):
    """A call outside the task scope is a 403 with the deny code and decision id; nothing is sent."""
    r = gateway.post("/tickets/comments/T-1", headers=auth(token(agent)), json={"body": "x"})
    assert r.status_code == 403
    body = r.json()
    assert (body["decision"], body["code"]) == ("deny", "out_of_scope")
    assert body["decision_id"].startswith("dec_")
    assert upstream.seen() == []


def test_captured_parameters_reach_policy_as_arguments(gateway, agent, runtime):
    """Path parameters are the decision's arguments (their digest is in the decision event)."""
    from tether.broker import args_digest

    with capture_events() as events:
        r = gateway.post("/tickets/comments/T-9", headers=auth(token(agent, [READ, COMMENT])), json={})
    assert r.status_code == 200
    (decision,) = [e for e in events if e.type == "decision"]
    assert decision.payload["args_digest"] == args_digest({"ticket_id": "T-9"})


def test_open_proxy_refused(gateway, agent, upstream):
    """Paths outside every configured route, and absolute-form targets, are 404 `no_route`."""
    tok = token(agent)
    for path in ("/", "/elsewhere/queue", "/ticketsqueue", "/slack/other"):
        r = gateway.get(path, headers=auth(tok))
        assert (r.status_code, r.json()["code"]) == (404, "no_route"), path
    assert upstream.seen() == []


async def _raw(app: Any, method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {
        "type": "http",
        "method": method,
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "query_string": b"",
        "headers": headers,
    }
    await app(scope, receive, send)
    return {"status": sent[0]["status"], "body": json.loads(sent[1]["body"])}


@pytest.mark.parametrize(
    "raw",
    [
        b"/tickets/../admin",
        b"/tickets/%2e%2e/admin",
        b"/tickets/queue%2F..",
        b"/tickets//queue",
        b"/tickets/a%5c..%5cadmin",
        b"http://evil.example/x",
    ],
)
def test_path_confusion_refused(runtime, upstream, agent, raw):
    """Dot segments, encoded slashes/backslashes and absolute-form targets never reach an upstream."""
    app = HttpGateway(routes_for(upstream), LocalAuthorizer(runtime))
    upstream.reset()
    out = anyio.run(_raw, app, "GET", raw, [(b"authorization", f"Bearer {token(agent)}".encode())])
    assert out["status"] in (400, 404) and out["body"]["code"] in ("invalid_path", "no_route")
    assert upstream.seen() == []


def test_missing_token_401(gateway, upstream):
    """No task token: 401 `missing_token`, nothing forwarded."""
    r = gateway.get("/tickets/queue")
    assert (r.status_code, r.json()["code"]) == (401, "missing_token")
    assert upstream.seen() == []


def test_forged_token_401(gateway, upstream):
    """A token the broker did not sign is a 401, nothing forwarded."""
    r = gateway.get("/tickets/queue", headers=auth("eyJhbGciOiJub25lIn0.e30."))
    assert r.status_code == 401
    assert upstream.seen() == []


def test_hop_by_hop_headers_stripped(gateway, agent, upstream):
    """Hop-by-hop, Connection-named, cookie and proxy headers are dropped in both directions."""
    r = gateway.get(
        "/tickets/cookie",
        headers=auth(
            token(agent),
            Connection="x-secret-hop",
            **{
                "X-Secret-Hop": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "Cookie": "agent=1",
                "TE": "trailers",
                "X-Forwarded-Ok": "kept",
            },
        ),
    )
    assert r.status_code == 200
    (seen,) = upstream.seen()
    for name in ("x-secret-hop", "keep-alive", "proxy-authorization", "cookie", "te"):
        assert name not in seen["headers"], name
    assert seen["headers"]["x-forwarded-ok"] == "kept"
    assert "set-cookie" not in r.headers and "x-internal" not in r.headers
    assert r.headers["x-kept"] == "yes"


def test_traceparent_propagated_and_recorded(gateway, agent, upstream):
    """The caller's trace id continues upstream with a new span id and is on decision and call events."""
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with capture_events() as events:
        r = gateway.get("/tickets/queue", headers=auth(token(agent), traceparent=f"00-{trace}-{span}-01"))
    assert r.status_code == 200
    (seen,) = upstream.seen()
    version, t, s, flags = seen["headers"]["traceparent"].split("-")
    assert (version, t, flags) == ("00", trace, "01") and s != span
    decision = next(e for e in events if e.type == "decision")
    call = next(e for e in events if e.type == "call.forwarded")
    assert decision.trace_id == call.trace_id == trace


def test_forwarded_call_audited_with_decision(gateway, agent, upstream):
    """Each forwarded call is a `call.forwarded` event linked to its decision; no token or body in it."""
    tok = token(agent)
    with capture_events() as events:
        r = gateway.get("/tickets/queue?x=1", headers=auth(tok))
    call = next(e for e in events if e.type == "call.forwarded")
    assert call.decision_id == r.headers["x-tether-decision-id"]
    p = call.payload
    assert (p["method"], p["route"], p["upstream_status"], p["outcome"]) == ("GET", "/tickets", 200, "ok")
    assert p["response_bytes"] == len(r.content) and p["duration_ms"] >= 0
    assert call.task_id and call.agent == agent.spiffe_id
    text = json.dumps([e.to_dict() for e in events])
    minted = upstream.seen()[0]["headers"]["authorization"].split(" ", 1)[1]
    assert tok not in text and minted not in text and "request_body" not in p


def test_request_body_too_large_413(gateway, agent, upstream):
    """A body over `max_request_bytes` is refused with 413 before anything is forwarded."""
    r = gateway.post("/tickets/comments/T-1", headers=auth(token(agent, [COMMENT])), content=b"x" * 5000)
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")
    assert upstream.seen() == []


@pytest.mark.parametrize(
    "length",
    ["\u00b2".encode("latin-1"), b"9" * 5000, b"-1", b"1e3"],
    ids=["superscript-two", "5000-digits", "negative", "exponent"],
)
def test_malformed_content_length_is_413_not_500(runtime, upstream, agent, length):
    """A `Content-Length` that is not a plain decimal (a latin-1 digit `int` refuses, one
    too long for `int`) is refused as too large, never a 500, and nothing is forwarded."""
    app = HttpGateway(routes_for(upstream), LocalAuthorizer(runtime))
    upstream.reset()
    headers = [(b"authorization", f"Bearer {token(agent)}".encode()), (b"content-length", length)]
    out = anyio.run(_raw, app, "GET", b"/tickets/queue", headers)
    assert (out["status"], out["body"]["code"]) == (413, "payload_too_large")
    assert upstream.seen() == []


def test_streamed_request_body_over_limit_413(gateway, agent, upstream):
    """A chunked body that grows past the limit is cut off with 413."""

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    r = gateway.post("/tickets/comments/T-1", headers=auth(token(agent, [COMMENT])), content=chunks())
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")


def test_response_too_large_502(gateway, agent):
    """An upstream answer over `max_response_bytes` is not relayed: 502."""
    r = gateway.get("/tickets/big?n=9000", headers=auth(token(agent)))
    assert (r.status_code, r.json()["code"]) == (502, "upstream_response_too_large")


def test_upstream_timeout_504(gateway, agent):
    """An upstream slower than the timeout is a 504 `upstream_timeout`."""
    r = gateway.get("/tickets/slow?s=3", headers=auth(token(agent)))
    assert (r.status_code, r.json()["code"]) == (504, "upstream_timeout")


def test_unreachable_upstream_502(gateway, agent):
    """A refused upstream connection is a 502 `upstream_unavailable`."""
    r = gateway.get("/dead/queue", headers=auth(token(agent)))
    assert (r.status_code, r.json()["code"]) == (502, "upstream_unavailable")


def test_approval_required_403_with_approval_id_and_retry_after(gateway, agent, upstream):
    """`approval_required` is a 403 naming the approval, with `Retry-After`; nothing is sent."""
    tok = token(agent, [{"action": "tool:call", "resource": "billing.refund"}], "billing.refund")
    r = gateway.post("/billing/refund/T-42", headers=auth(tok), json={})
    assert r.status_code == 403
    assert r.json()["code"] == "approval_required" and r.json()["approval_id"].startswith("apr_")
    assert r.headers["retry-after"] == "7"
    assert upstream.seen() == []


def test_approved_call_forwarded_once(gateway, agent, runtime, upstream):
    """Once a human grants the approval the identical call goes through."""
    tok = token(agent, [{"action": "tool:call", "resource": "billing.refund"}], "billing.refund")
    approval = gateway.post("/billing/refund/T-42", headers=auth(tok), json={}).json()["approval_id"]
    runtime.broker.decide_approval(approval, grant=True, by="uid:0")
    assert gateway.post("/billing/refund/T-42", headers=auth(tok), json={}).status_code == 200
    assert len(upstream.seen()) == 1


def test_closed_task_token_refused(gateway, agent, client):
    """Once the task is closed its token stops working at the gateway on the next call."""
    r = agent.open([READ])
    tok, task_id = r.json()["task_token"], r.json()["task_id"]
    assert gateway.get("/tickets/queue", headers=auth(tok)).status_code == 200
    assert client.post(f"/v1/tasks/{task_id}/close", headers=auth(tok)).status_code == 200
    r = gateway.get("/tickets/queue", headers=auth(tok))
    assert (r.status_code, r.json()["code"]) == (403, "task_not_active")


class _Recorder:
    """An authorizer that records what it was asked and denies (for checking the gateway's side)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def authorize(self, token, req, proof=None):
        from tether.gateway.authorizer import Verdict

        self.calls.append((token, req, proof))
        return Verdict(decision={"decision": "deny", "decision_id": "dec_x", "code": "no_permit"})

    async def aclose(self) -> None:
        return None


def test_dpop_proof_passed_with_gateway_url(upstream):
    """The agent's DPoP proof goes to the broker with the method and the URL the agent called."""
    rec = _Recorder()
    with TestClient(HttpGateway(routes_for(upstream), rec), base_url="https://gw.example") as gw:
        r = gw.get("/tickets/queue?x=1", headers={"Authorization": "DPoP tok", "DPoP": "proof.jwt"})
    assert r.status_code == 403
    (token_, req, proof) = rec.calls[0]
    assert (token_, req.action, req.resource) == ("tok", "http:read", "tickets.queue")
    assert (proof.proof, proof.method, proof.url, proof.count) == (
        "proof.jwt",
        "GET",
        "https://gw.example/tickets/queue",
        1,
    )


def test_approval_hold_forwards_once_granted(runtime, upstream, agent, credentials):
    """With `approval_wait_seconds` the request is held and goes through when a human grants it."""
    import threading
    import tomllib

    doc = tomllib.loads(ROUTES.format(up=upstream.url))
    doc["gateway"]["approval_wait_seconds"] = 20
    tok = token(agent, [{"action": "tool:call", "resource": "billing.refund"}], "billing.refund")
    upstream.reset()
    requested: list[str] = []
    asked = threading.Event()

    def on_event(e: Any) -> None:
        if e.type == "approval.requested":
            requested.append(e.payload["approval_id"])
            asked.set()

    def grant() -> None:  # the human, once the gateway has asked
        if asked.wait(timeout=15):
            runtime.broker.decide_approval(requested[0], grant=True, by="uid:0")

    remove = runtime.audit.add_listener(on_event)
    granter = threading.Thread(target=grant)
    granter.start()
    try:
        with TestClient(HttpGateway(parse_routes(doc), LocalAuthorizer(runtime))) as gw:
            r = gw.post("/billing/refund/T-42", headers=auth(tok), json={})
    finally:
        granter.join(timeout=20)
        remove()
    assert r.status_code == 200
    assert len(upstream.seen()) == 1

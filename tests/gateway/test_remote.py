"""Gateways in another process: the broker's enforcer API and the remote authorizer."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from tether.audit.chain import capture_events
from tether.gateway.authorizer import RemoteAuthorizer
from tether.gateway.http import HttpGateway
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import make_settings

from .conftest import FAKE_SECRET, GATEWAY_PATH
from .test_http_gateway import READ, auth, routes_for, token

SEND = {"action": "send", "resource": "slack-external.post"}
BODY = {"action": "send", "resource": "slack-external.post"}


def gateway_svid(domain, runtime) -> str:
    return domain.svid(GATEWAY_PATH, runtime.settings.broker_audience)


@pytest.fixture
def remote_gateway(runtime, domain, upstream, credentials) -> Iterator[TestClient]:
    upstream.reset()
    broker = httpx.ASGITransport(app=create_app(runtime))
    authorizer = RemoteAuthorizer(
        "http://broker.test", lambda: gateway_svid(domain, runtime), transport=broker
    )
    with TestClient(HttpGateway(routes_for(upstream), authorizer), raise_server_exceptions=False) as c:
        yield c


def test_enforcer_api_requires_gateway_svid(client, agent):
    """Without the gateway's own SVID the enforcer API answers 401, whatever the task token."""
    tok = token(agent, [SEND], "reporting.weekly")
    r = client.post("/v1/gateway/authorize", json=BODY, headers=auth(tok))
    assert (r.status_code, r.json()["code"]) == (401, "enforcer_unauthenticated")


def test_agent_cannot_pose_as_enforcer_to_read_injected_secret(client, agent, credentials):
    """An agent presenting its own SVID as the enforcer's is refused: no `for_enforcer` for it."""
    tok = token(agent, [SEND], "reporting.weekly")
    headers = auth(tok, **{"X-Tether-Enforcer": agent.svid()})
    r = client.post("/v1/gateway/authorize", json=BODY, headers=headers)
    assert (r.status_code, r.json()["code"]) == (403, "enforcer_not_configured")
    assert FAKE_SECRET not in r.text


def test_public_authorize_never_returns_injected_secret(agent, credentials):
    """The agent-facing `/v1/authorize` allows the send but never carries the upstream secret."""
    tok = token(agent, [SEND], "reporting.weekly")
    r = agent.authorize(tok, "send", "slack-external.post")
    assert r.json()["decision"] == "allow"
    assert FAKE_SECRET not in r.text


def test_configured_enforcer_receives_enforcer_credential(client, agent, domain, runtime, credentials):
    """A configured enforcement point gets the decision, the task and the `for_enforcer` half."""
    tok = token(agent, [SEND], "reporting.weekly")
    r = client.post(
        "/v1/gateway/authorize",
        json=BODY,
        headers=auth(tok, **{"X-Tether-Enforcer": gateway_svid(domain, runtime)}),
    )
    assert r.status_code == 200
    doc = r.json()
    assert doc["decision"]["decision"] == "allow" and doc["task"]["agent"] == agent.spiffe_id
    assert doc["credential"]["for_enforcer"]["value"] == FAKE_SECRET


def test_remote_gateway_injects_secret_and_records_call(remote_gateway, agent, upstream, domain):
    """Through the remote authorizer: the upstream gets the injected secret, the call is recorded."""
    tok = token(agent, [SEND], "reporting.weekly")
    with capture_events() as events:
        r = remote_gateway.post("/slack/post", headers=auth(tok), json={"text": "hi"})
    assert r.status_code == 200
    (seen,) = upstream.seen()
    assert seen["headers"]["x-api-key"] == FAKE_SECRET
    assert not any(tok in v for v in seen["headers"].values())
    call = next(e for e in events if e.type == "call.forwarded")
    assert call.payload["enforcer"] == domain.spiffe_id(GATEWAY_PATH)
    assert call.decision_id == r.headers["x-tether-decision-id"] and call.agent == agent.spiffe_id
    assert FAKE_SECRET not in json.dumps([e.to_dict() for e in events])


def test_remote_gateway_refuses_closed_task_at_once(remote_gateway, agent, client):
    """A closed task's token is refused by a remote gateway on the next call (no cache)."""
    r = agent.open([READ])
    tok, task_id = r.json()["task_token"], r.json()["task_id"]
    assert remote_gateway.get("/tickets/queue", headers=auth(tok)).status_code == 200
    client.post(f"/v1/tasks/{task_id}/close", headers=auth(tok))
    r = remote_gateway.get("/tickets/queue", headers=auth(tok))
    assert (r.status_code, r.json()["code"]) == (403, "task_not_active")


def test_unreachable_broker_fails_closed(upstream, agent):
    """When the broker cannot be reached nothing is forwarded: 503 `broker_unavailable`."""
    upstream.reset()
    authorizer = RemoteAuthorizer("http://127.0.0.1:9", lambda: "svid")
    with TestClient(HttpGateway(routes_for(upstream), authorizer)) as gw:
        r = gw.get("/tickets/queue", headers=auth(token(agent)))
    assert (r.status_code, r.json()["code"]) == (503, "broker_unavailable")
    assert upstream.seen() == []


def test_http_gateway_mounted_in_broker_process(tmp_path, domain, upstream, agent):
    """`[gateway] http_routes` serves the gateway on the broker's listener under `http_mount`."""
    state = tmp_path / "mounted"
    state.mkdir()
    (state / "routes.toml").write_text(
        f'[[routes]]\nprefix = "/tickets"\nupstream = "{upstream.url}"\nservice = "tickets"\n'
        '[[routes.rules]]\nmethod = "GET"\npath = "/queue"\naction = "http:read"\n'
        'resource = "tickets.queue"\n'
    )
    extra = '\n[gateway]\nhttp_routes = "routes.toml"\n\n[identity]\ndpop = "optional"\n'
    s = make_settings(
        state,
        store_url=f"sqlite:///{state / 'tether.db'}",
        domain=domain,
        overrides={"environment": "prod"},
        config_extra=extra,
    )
    rt = Runtime.start(s)
    try:
        with TestClient(create_app(rt)) as c:
            r = c.post(
                "/v1/tasks",
                json={"intent": "support.triage", "description": "t", "scope": [READ]},
                headers={"Authorization": f"Bearer {domain.svid(agent.spiffe_id, s.broker_audience)}"},
            )
            tok = r.json()["task_token"]
            upstream.reset()
            r = c.get("/gw/tickets/queue", headers=auth(tok))
            assert r.status_code == 200 and r.json()["path"] == "/queue"
            assert c.get("/gw/tickets/other", headers=auth(tok)).json()["code"] == "no_route"
    finally:
        rt.close()

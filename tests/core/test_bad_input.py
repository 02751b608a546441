"""Bad input gets a 4xx with a stable code: never a 5xx, never an allow."""

from __future__ import annotations

import json

import pytest

from tether.audit.chain import capture_events
from tether.testing import TestTrustDomain

READ_Q = {"action": "read", "resource": "tickets.queue"}


@pytest.fixture
def token(agent):
    return agent.open([READ_Q]).json()["task_token"]


def _post(client, path, body, token, **headers):
    return client.post(
        path,
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers},
    )


@pytest.mark.parametrize(
    "body, code",
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (b'{"action": "read", "action": "write", "resource": "tickets.queue"}', "malformed_json"),
        (b'{"action": "read", "resource": "tickets.queue", "x": NaN}', "malformed_json"),
        (b'{"action": "read", "resource": "tickets.queue", "admin": true}', "unknown_field"),
        (b'{"action": 5, "resource": "tickets.queue"}', "invalid_field"),
        (b'{"resource": "tickets.queue"}', "missing_field"),
        (b'{"action": "read", "resource": "tickets.queue", "context": {"sudo": 1}}', "unknown_field"),
        (b'{"action": "read", "resource": "tickets.queue", "arguments": [1]}', "invalid_field"),
    ],
)
def test_malformed_authorize_bodies_are_400(client, token, body, code):
    """Malformed JSON, duplicate keys, NaN, unknown or mistyped fields: 400 with a code."""
    r = _post(client, "/v1/authorize", body, token)
    assert r.status_code == 400 and r.json()["code"] == code


def test_unknown_action_is_400_and_audited(client, token):
    """An action the schema does not know is refused (400) and the refusal is recorded."""
    with capture_events() as events:
        r = _post(client, "/v1/authorize", json.dumps({"action": "sudo", "resource": "tickets.queue"}), token)
    assert r.status_code == 400 and r.json()["code"] == "unknown_action"
    assert [(e.type, e.payload["code"]) for e in events] == [("decision", "unknown_action")]


def test_unknown_resource_is_400(client, token):
    """A resource outside the catalog is refused with `unknown_resource`."""
    r = _post(client, "/v1/authorize", json.dumps({"action": "read", "resource": "../../etc"}), token)
    assert r.status_code == 400 and r.json()["code"] == "unknown_resource"


def test_oversized_body_is_413_before_reading(client, token):
    """A body over 1 MiB is refused with 413 `payload_too_large`."""
    big = json.dumps({"action": "read", "resource": "tickets.queue", "arguments": {"x": "a" * (1 << 20)}})
    r = _post(client, "/v1/authorize", big, token)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_oversized_body_without_content_length_is_413(client, token):
    """A chunked body that grows past the limit is cut off with 413 too."""

    def gen():
        yield b'{"action": "read", "resource": "tickets.queue", "arguments": {"x": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}}'

    r = client.post(
        "/v1/authorize",
        content=gen(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413


def test_wrong_content_type_is_400(client, token):
    """Only application/json bodies are accepted."""
    r = _post(client, "/v1/authorize", "action=read", token, **{"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["code"] == "unsupported_media_type"


def test_missing_bearer_is_401(client):
    """No Authorization header: 401 `missing_token` with a WWW-Authenticate challenge."""
    r = client.post("/v1/authorize", json=READ_Q)
    assert r.status_code == 401 and r.json()["code"] == "missing_token"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_forged_task_token_is_401_and_audited(client, token):
    """A task token with a tampered payload fails the signature check and is recorded."""
    head, payload, sig = token.split(".")
    forged = ".".join([head, payload[:-4] + ("AAAA" if payload[-4:] != "AAAA" else "BBBB"), sig])
    with capture_events() as events:
        r = _post(client, "/v1/authorize", json.dumps(READ_Q), forged)
    assert r.status_code == 401 and r.json()["code"] in ("bad_signature", "token_malformed")
    assert events and events[0].payload["outcome"] == "deny"


def test_svid_used_as_task_token_is_refused(client, agent):
    """A JWT-SVID is not a task token: wrong typ, so 401."""
    r = _post(client, "/v1/authorize", json.dumps(READ_Q), agent.svid())
    assert r.status_code == 401 and r.json()["code"] in ("bad_typ", "unknown_kid", "bad_issuer")


def test_task_token_used_as_svid_is_refused(client, token):
    """A task token cannot open a new task in place of a workload SVID."""
    r = client.post(
        "/v1/tasks",
        json={"intent": "support.triage", "scope": [READ_Q]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 401


def test_expired_svid_is_401(client, runtime, domain):
    """An expired JWT-SVID cannot open a task."""
    svid = domain.svid("bot", runtime.settings.broker_audience, ttl=-120)
    r = client.post(
        "/v1/tasks",
        json={"intent": "support.triage", "scope": [READ_Q]},
        headers={"Authorization": f"Bearer {svid}"},
    )
    assert r.status_code == 401 and r.json()["code"] == "token_expired"


def test_svid_for_another_audience_is_401(client, domain):
    """An SVID minted for another service cannot be replayed at the broker."""
    svid = domain.svid("bot", "spiffe://support.example/some-other-service")
    r = client.post(
        "/v1/tasks",
        json={"intent": "support.triage", "scope": [READ_Q]},
        headers={"Authorization": f"Bearer {svid}"},
    )
    assert r.status_code == 401 and r.json()["code"] == "bad_audience"


def test_svid_from_untrusted_domain_is_401(client, runtime):
    """A well-formed SVID signed by a trust domain the broker does not trust is refused."""
    rogue = TestTrustDomain("evil.example")
    svid = rogue.svid("bot", runtime.settings.broker_audience)
    r = client.post(
        "/v1/tasks",
        json={"intent": "support.triage", "scope": [READ_Q]},
        headers={"Authorization": f"Bearer {svid}"},
    )
    assert r.status_code == 401 and r.json()["code"] == "untrusted_domain"


def test_key_of_one_domain_cannot_sign_for_another(client, runtime):
    """A key from an untrusted domain with a sub in the trusted domain fails (no cross-domain keys)."""
    rogue = TestTrustDomain("evil.example")
    svid = rogue.svid("spiffe://support.example/bot", runtime.settings.broker_audience)
    r = client.post(
        "/v1/tasks",
        json={"intent": "support.triage", "scope": [READ_Q]},
        headers={"Authorization": f"Bearer {svid}"},
    )
    assert r.status_code == 401 and r.json()["code"] in ("unknown_kid", "bad_signature")


@pytest.mark.parametrize(
    "child",
    [
        "spiffe://support.example/a?x=1",
        "spiffe://support.example/a#f",
        "spiffe://support.example:443/a",
        "http://support.example/a",
        "spiffe://support.example/" + "a" * 2100,
    ],
)
def test_bad_spiffe_id_in_delegation_is_400(client, agent, child):
    """A child SPIFFE ID with query, fragment, port, wrong scheme or > 2048 bytes is 400."""
    p = agent.open([READ_Q]).json()
    r = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        json={"child": child, "scope": [READ_Q], "ttl_seconds": 60},
        headers={"Authorization": f"Bearer {p['task_token']}"},
    )
    assert r.status_code == 400 and r.json()["code"] in ("invalid_spiffe_id", "invalid_field")


def test_unknown_intent_is_400(agent):
    """A task for an intent the catalog does not list is refused."""
    r = agent.open([READ_Q], intent="exfiltrate.everything")
    assert r.status_code == 400 and r.json()["code"] == "unknown_intent"


@pytest.mark.parametrize(
    "scope, code",
    [
        ([], "invalid_scope"),
        ([{"action": "read"}], "missing_field"),
        ([{"action": "fly", "resource": "tickets"}], "unknown_action"),
        ([{"action": "read", "resource": "nowhere"}], "unknown_resource"),
        ("read everything", "invalid_scope"),
    ],
)
def test_bad_scope_is_400(agent, scope, code):
    """Empty, malformed or unknown scope entries are refused with a code naming the problem."""
    r = agent.open(scope)
    assert r.status_code == 400 and r.json()["code"] == code


def test_unknown_route_is_404_json(client):
    """No open endpoints: an unknown path is a JSON 404."""
    r = client.get("/v1/admin/secrets")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_oversized_header_is_rejected_by_the_server(runtime):
    """Headers beyond limits.max_header_bytes are refused by the HTTP server, not processed."""
    import asyncio
    import contextlib
    import socket
    import threading

    import uvicorn

    from tether.server.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(runtime),
        log_level="error",
        h11_max_incomplete_event_size=runtime.settings.limits.max_header_bytes,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        import httpx

        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.025)
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Big": "a" * 40_000}, timeout=5)
        assert r.status_code in (400, 431)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        with contextlib.suppress(OSError):
            sock.close()

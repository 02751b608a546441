"""One strict decoder at the edge: what canonical JSON, the audit hash or the store cannot
hold is a 400 with a code, never a 500; a forged token is recorded whatever the body is."""

from __future__ import annotations

import json

import pytest

from tether.audit.chain import capture_events

READ_Q = {"action": "read", "resource": "tickets.queue"}


@pytest.fixture
def token(agent):
    return agent.open([READ_Q]).json()["task_token"]


def _post(client, path, body: bytes, token: str):
    return client.post(
        path, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )


def _forge(token: str) -> str:
    head, payload, sig = token.split(".")
    return ".".join([head, payload, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")])


ARGS = b'{"action": "read", "resource": "tickets.queue", "arguments": '
HOSTILE_BODIES = {
    "lone_surrogate_key": rb'{"\ud800": 1}',
    "lone_surrogate_value": rb'{"action": "read\udfff", "resource": "tickets.queue"}',
    "overflow_to_infinity": b'{"action": "read", "resource": "tickets.queue", "arguments": {"n": 1e999}}',
    "negative_infinity": b'{"action": "read", "resource": "tickets.queue", "arguments": {"n": -1e999}}',
    "integer_beyond_double": ARGS + b'{"n": 9007199254740993}}',
    "nul_character": rb'{"action": "read", "resource": "tickets\u0000queue"}',
    "deep_nesting": b'{"action": "read", "resource": "tickets.queue", "arguments": {"a": '
    + b"[" * 200
    + b"]" * 200
    + b"}}",
    "utf16_body": json.dumps(READ_Q).encode("utf-16"),
    "byte_order_mark": b"\xef\xbb\xbf" + json.dumps(READ_Q).encode(),
    "invalid_utf8": b'{"action": "read\xff", "resource": "tickets.queue"}',
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_json_on_authorize_is_400_not_500(client, token, body):
    """Lone surrogates, 1e999, unsafe integers, NULs, deep nesting, non-UTF-8: 400 `malformed_json`."""
    r = _post(client, "/v1/authorize", body, token)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_json"


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/credentials", "/v1/introspect", "/v1/revoke-token"])
def test_lone_surrogate_on_every_json_route_is_400(client, agent, token, path):
    """The lone-surrogate body that gave a text/plain 500 on each JSON route is a JSON 400."""
    cred = agent.svid() if path in ("/v1/tasks", "/v1/introspect", "/v1/revoke-token") else token
    r = _post(client, path, rb'{"\ud800": 1}', cred)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_json"


def test_surrogate_pair_is_a_valid_character(client, token):
    """A correctly paired surrogate escape (an emoji) is not refused: only lone halves are."""
    r = _post(
        client,
        "/v1/authorize",
        rb'{"action": "read", "resource": "tickets.queue", "arguments": {"m": "\ud83d\ude00"}}',
        token,
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/v1/authorize", "/v1/credentials"])
def test_forged_token_with_lone_surrogate_body_is_audited(client, token, path):
    """A forged token whose body is also malformed is refused as forged (401) and recorded."""
    with capture_events() as events:
        r = _post(client, path, rb'{"action": "read\ud800", "resource": "tickets.queue"}', _forge(token))
    assert r.status_code == 401, r.text
    assert [(e.type, e.payload["outcome"], e.payload["code"]) for e in events] == [
        ("decision", "deny", r.json()["code"])
    ]


def test_forged_svid_with_malformed_body_is_401_and_audited(client, agent):
    """Opening a task with a forged SVID and a broken body: the SVID is refused and recorded."""
    with capture_events() as events:
        r = _post(client, "/v1/tasks", b"{not json", _forge(agent.svid()))
    assert r.status_code == 401, r.text
    assert events and events[-1].payload.get("code") == r.json()["code"]


def test_valid_token_with_malformed_body_is_still_400(client, token):
    """Checking the token first does not change the answer for a genuine caller: 400."""
    r = _post(client, "/v1/authorize", rb'{"\ud800": 1}', token)
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"


@pytest.mark.parametrize(
    "query", ["since=%C2%B2", "limit=%D9%A3", "wait=%EF%BC%95", "since=1&since=2", "since=-1"]
)
def test_non_ascii_digits_in_query_are_400(client, agent, query):
    """`?since=²` (isdigit() but not int()), Arabic-Indic or full-width digits, repeats: 400."""
    r = client.get(f"/v1/revocations?{query}", headers={"Authorization": f"Bearer {agent.svid()}"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_field"


# Header bytes are decoded as Latin-1: b"\xb2" arrives as "²", which isdigit() accepts.
@pytest.mark.parametrize("value", [b"\xb2", b"\xb9", "٣".encode(), b"1e3", b"-5", b"9" * 40])
def test_non_ascii_digits_in_last_event_id_are_400(client, agent, value):
    """`Last-Event-ID: ²` and other non-cursors on the SSE feed: 400 `invalid_header`."""
    r = client.get(
        "/v1/revocations/stream",
        headers={"Authorization": f"Bearer {agent.svid()}", "Last-Event-ID": value},
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_header"


@pytest.mark.parametrize("value", [b"\xb2", b"12abc", b"-1"])
def test_non_ascii_digits_in_content_length_are_400(client, token, value):
    """A Content-Length that is not ASCII digits is 400 `invalid_header` (ASGI in-process)."""
    r = client.post(
        "/v1/authorize",
        content=json.dumps(READ_Q).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Length": value,
        },
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_header"

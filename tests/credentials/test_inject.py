"""The `inject` connector and its secrets: never to the agent, encrypted, masked."""

from __future__ import annotations

from sqlalchemy import select

from tether.server.admin import Operator
from tether.store import credentials_tables as ct
from tether.testing import capture_events

SECRET = "Bearer sk-live-0123456789abcdef"


def _email_task(agent):
    r = agent.open([{"action": "send", "resource": "email.send"}])
    assert r.status_code == 201, r.text
    return r.json()


def test_agent_gets_lease_but_never_the_secret(agent, runtime):
    """for_agent has only kind and expiry; the header and value go to the enforcer side."""
    runtime.credentials.secrets.set("email", SECRET)
    t = _email_task(agent)
    d = agent.authorize(t["task_token"], "send", "email.send")
    assert d.json()["decision"] == "allow", d.text
    assert set(d.json()["credential"]) == {"lease_id", "kind", "expires_at"}
    assert SECRET not in d.text and "sk-live" not in d.text


def test_enforcer_side_carries_header_and_value(agent, runtime):
    """An in-process enforcement point receives {kind, header, value} from authorize."""
    from tether.broker import AuthorizeRequest

    runtime.credentials.secrets.set("email", SECRET)
    t = _email_task(agent)
    result = runtime.broker.authorize(t["task_token"], AuthorizeRequest("send", "email.send"))
    assert result.credential.for_enforcer == {"kind": "inject", "header": "Authorization", "value": SECRET}


def test_missing_secret_denies_with_code(agent):
    """An inject service whose secret is not set denies with `secret_not_configured`."""
    t = _email_task(agent)
    body = agent.authorize(t["task_token"], "send", "email.send").json()
    assert body["decision"] == "deny" and body["code"] == "secret_not_configured"


def test_secret_is_encrypted_at_rest(runtime):
    """The stored blob does not contain the secret."""
    runtime.credentials.secrets.set("email", SECRET)
    with runtime.db.read() as conn:
        blob = conn.execute(select(ct.secrets.c.value_enc)).scalar_one()
    assert SECRET.encode() not in blob and b"sk-live" not in blob


def test_secret_never_in_audit_events(agent, runtime):
    """No audit event of an injected call holds the secret."""
    runtime.credentials.secrets.set("email", SECRET)
    t = _email_task(agent)
    with capture_events() as events:
        agent.authorize(t["task_token"], "send", "email.send")
    assert events and all("sk-live" not in str(e.to_dict()) for e in events)


def test_audit_filter_masks_a_leaked_secret(runtime):
    """A secret that reaches an audit payload by any path is masked before it is written."""
    runtime.credentials.secrets.set("email", SECRET)
    with capture_events() as events, runtime.audit.unit() as u:
        u.emit("call.result", {"body": f"upstream echoed {SECRET.split(' ')[1]} back"})
    assert "sk-live" not in str(events[0].payload)


def test_header_injection_in_secret_value_is_refused(runtime):
    """A secret value with a newline (header injection) is a 400."""
    op = Operator(0, 0)
    try:
        runtime.operations["secrets.set"](runtime, {"name": "email", "value": "x\r\nX-Evil: 1"}, op)
    except Exception as exc:
        assert getattr(exc, "code", None) == "invalid_secret_value"
    else:
        raise AssertionError("accepted a header-injecting value")


def test_admin_secrets_set_never_echoes_the_value(runtime):
    """`secrets.set` and `secrets.list` over the admin socket never return the value."""
    op = Operator(0, 0)
    out = runtime.operations["secrets.set"](runtime, {"name": "email", "value": SECRET}, op)
    listed = runtime.operations["secrets.list"](runtime, {}, op)
    assert "sk-live" not in str(out) + str(listed) and listed[0]["name"] == "email"

"""OIDC sign-in (authorization code + PKCE) against the real test issuer, roles, sealed values."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from tether.audit import event as ev
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.server.signin import Sealer, role_for
from tether.testing import capture_events, make_settings
from tether.testing.oidc import TestOidcIssuer

from .conftest import csrf_of

REDIRECT = "http://127.0.0.1:8421/console/auth/callback"
USERS = {
    "alice": {"email": "alice@example.com", "groups": ["ops-admins"]},
    "ana": {"email": "ana@example.com", "groups": ["approvers"]},
    "vera": {"email": "vera@example.com", "groups": ["staff"]},
    "mallory": {"email": "mallory@example.com", "groups": ["contractors"]},
}


def console_config(issuer: str) -> str:
    return f"""
[console.oidc]
issuer = "{issuer}"
client_id = "tether-console"

[console.roles]
admin = ["ops-admins"]
approver = ["approvers"]
viewer = ["staff"]
"""


@pytest.fixture
def idp() -> Iterator[TestOidcIssuer]:
    with TestOidcIssuer(users=USERS, client_id="tether-console", redirect_uris=[REDIRECT]) as issuer:
        yield issuer


@pytest.fixture
def oidc_client(tmp_path: Path, idp: TestOidcIssuer, domain: Any) -> Iterator[tuple[TestClient, Runtime]]:
    settings = make_settings(
        tmp_path / "state",
        domain=domain,
        overrides={"environment": "prod"},
        config_extra=console_config(idp.issuer),
    )
    rt = Runtime.start(settings)
    try:
        with TestClient(create_app(rt), raise_server_exceptions=False) as c:
            yield c, rt
    finally:
        rt.close()


def through_issuer(client: TestClient, user: str) -> tuple[httpx.Response, str]:
    """Start at the console, sign in at the issuer as ``user``; return the callback response."""
    start = client.get("/console/auth/start", follow_redirects=False)
    assert start.status_code == 303
    authorize = start.headers["location"]
    page = httpx.get(authorize)
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
    back = httpx.post(urlsplit(authorize)._replace(query="").geturl(), data={**fields, "user": user})
    assert back.status_code == 303
    target = urlsplit(back.headers["location"])
    assert target.geturl().startswith(REDIRECT)
    return client.get(f"{target.path}?{target.query}"), authorize


def test_oidc_sign_in_with_pkce_names_the_subject(oidc_client, idp):
    """Code + PKCE (S256) through the issuer gives a session naming the OIDC subject."""
    client, _ = oidc_client
    with capture_events() as events:
        landing, authorize = through_issuer(client, "alice")
    assert landing.status_code == 200
    q = parse_qs(urlsplit(authorize).query)
    assert q["code_challenge_method"] == ["S256"] and q["nonce"] and q["state"]
    assert idp.token_requests[-1]["code_verifier"]
    page = client.get("/console/tasks")
    assert page.status_code == 200 and "alice@example.com" in page.text and "admin" in page.text
    signin = next(e for e in events if e.type == ev.CONSOLE_SIGNIN)
    assert signin.payload["human"] == "oidc:alice (alice@example.com)" and signin.payload["role"] == "admin"


def test_viewer_cannot_approve_and_is_audited(oidc_client, make_agent_for):
    """A viewer's approve is 403 and audited; the approval stays pending."""
    client, rt = oidc_client
    approval_id = make_agent_for(client, rt)
    through_issuer(client, "vera")
    token = csrf_of(client, f"/console/approvals/{approval_id}")
    with capture_events() as events:
        r = client.post(f"/console/approvals/{approval_id}", data={"decision": "approve", "csrf": token})
    assert r.status_code == 403 and "role_required" in r.text
    assert rt.broker.list_approvals("pending")[0].id == approval_id
    refused = next(e for e in events if e.type == ev.CONSOLE_REFUSED)
    assert refused.payload["human"].startswith("oidc:vera") and refused.payload["needed"] == "approver"


def test_approver_decision_names_the_approver(oidc_client, make_agent_for):
    """An approver's approval is recorded under their OIDC subject."""
    client, rt = oidc_client
    approval_id = make_agent_for(client, rt)
    through_issuer(client, "ana")
    token = csrf_of(client, f"/console/approvals/{approval_id}")
    client.post(f"/console/approvals/{approval_id}", data={"decision": "reject", "csrf": token})
    assert rt.broker.list_approvals("rejected")[0].decided_by == "oidc:ana (ana@example.com)"


def test_approver_cannot_pull_the_kill_switch(oidc_client):
    """The kill switch needs the admin role."""
    client, _ = oidc_client
    through_issuer(client, "ana")
    assert client.get("/console/kill").status_code == 403


def test_user_without_a_role_is_refused(oidc_client):
    """A valid sign-in with no mapped role gets no session, and the refusal is audited."""
    client, _ = oidc_client
    with capture_events() as events:
        landing, _ = through_issuer(client, "mallory")
    assert landing.status_code == 403 and "signin_no_role" in landing.text
    assert client.get("/console/tasks", follow_redirects=False).status_code == 303
    assert any(e.type == ev.CONSOLE_REFUSED and e.payload.get("code") == "signin_no_role" for e in events)


def test_callback_with_another_state_is_refused(oidc_client):
    """A callback whose `state` is not this browser's (login CSRF) is refused."""
    client, _ = oidc_client
    client.get("/console/auth/start", follow_redirects=False)
    r = client.get("/console/auth/callback?code=abc&state=not-mine")
    assert r.status_code == 401 and "signin_failed" in r.text


def test_replayed_code_is_refused(oidc_client):
    """An authorization code works once: a replay gets no session."""
    client, _ = oidc_client
    start = client.get("/console/auth/start", follow_redirects=False)
    page = httpx.get(start.headers["location"])
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
    back = httpx.post(
        urlsplit(start.headers["location"])._replace(query="").geturl(), data={**fields, "user": "alice"}
    )
    cb = urlsplit(back.headers["location"])
    login_cookie = client.cookies.get("tether_console_login")
    assert client.get(f"{cb.path}?{cb.query}").status_code == 200
    client.cookies.clear()
    client.cookies.set("tether_console_login", login_cookie, path="/console/auth")
    assert client.get(f"{cb.path}?{cb.query}").status_code == 401


def test_open_redirect_after_sign_in_is_refused(oidc_client):
    """`next` may only name a console page."""
    client, _ = oidc_client
    r = client.get("/console/login?next=//evil.example/x", follow_redirects=False)
    assert "evil.example" not in r.text


def test_sealed_values_resist_forgery_and_kind_confusion():
    """A tampered, expired or other-purpose sealed value opens to nothing."""
    s = Sealer(b"k" * 32)
    good = s.seal({"a": 1}, 60, "session")
    assert s.open(good, "session")["a"] == 1
    assert s.open(good, "login-link") is None
    body, mac = good.split(".")
    assert s.open(body[:-2] + "xx." + mac, "session") is None
    assert Sealer(b"j" * 32).open(good, "session") is None
    assert s.open(s.seal({"a": 1}, -1, "session"), "session") is None


def test_role_mapping_takes_the_highest_role():
    """Claim values map to the highest role they grant; none maps to no role."""
    roles = {"viewer": ("staff",), "approver": ("approvers",), "admin": ("ops",)}
    assert role_for({"groups": ["staff", "approvers"]}, "groups", roles) == "approver"
    assert role_for({"groups": "ops"}, "groups", roles) == "admin"
    assert role_for({"groups": ["other"]}, "groups", roles) is None
    assert role_for({}, "groups", roles) is None


@pytest.fixture
def make_agent_for(domain):
    def make(client: TestClient, rt: Runtime) -> str:
        sid = domain.spiffe_id("billing-bot")
        svid = domain.svid(sid, rt.settings.broker_audience)
        task = client.post(
            "/v1/tasks",
            json={
                "intent": "billing.refund",
                "scope": [{"action": "tool:call", "resource": "billing.refund"}],
            },
            headers={"Authorization": f"Bearer {svid}"},
        ).json()
        d = client.post(
            "/v1/authorize",
            json={"action": "tool:call", "resource": "billing.refund", "arguments": {"ticket_id": "T-1"}},
            headers={"Authorization": f"Bearer {task['task_token']}"},
        ).json()
        return str(d["approval_id"])

    return make

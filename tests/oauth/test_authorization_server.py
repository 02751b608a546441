"""The broker as authorization server over real HTTP: each bad input refused with the OAuth
error its RFC names (audited, never a 5xx), code replay, consent replay and cross-site posts,
RFC 7009 revocation, and RFC 8693 token exchange through a generic OAuth library (Authlib)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.integrations.base_client import OAuthError as AuthlibError
from authlib.integrations.httpx_client import OAuth2Client
from cryptography.hazmat.primitives.asymmetric import ec

from tether.audit.chain import capture_events
from tether.identity.dpop import make_proof, thumbprint
from tether.identity.jwt import ANY, sign_jwt, verify_jwt
from tether.model import TaskState
from tether.oauth import pkce
from tether.oauth.metadata import ID_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE
from tether.testing import TestTrustDomain

from .rig import CLIENT_ID, Browser, Stack, oauth_stack, parse_page

DOMAIN = TestTrustDomain("support.example")
REDIRECT = "http://127.0.0.1:5555/callback"
VERIFIER = "verifier-" + "x" * 40
MCP_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}


# CI jobs proven by an OIDC token (here: the test issuer) are workloads too.
OIDC_WORKLOADS = """
[[identity.oidc_issuers]]
issuer = "IDP"
audience = "tether-broker"
spiffe_id = "spiffe://{trust_domain}/ci/{sub}"
subjects = ["ci-*"]
algorithms = ["ES256"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with oauth_stack(tmp_path_factory.mktemp("as"), DOMAIN, tables=OIDC_WORKLOADS) as s:
        yield s


def authorize_url(stack: Stack, **change: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "state": "st-1",
        "code_challenge": pkce.s256(VERIFIER),
        "code_challenge_method": "S256",
        "resource": stack.gateway_url,
        "scope": "tool:call@time",
    }
    params.update(change)
    return (
        stack.broker_url
        + "/console/oauth/authorize?"
        + urlencode({k: v for k, v in params.items() if v is not None})
    )


def refusals(events: list[Any]) -> list[str]:
    return [str(e.payload.get("error")) for e in events if e.type == "oauth.refused"]


def code_for(stack: Stack) -> str:
    browser = Browser(stack)
    try:
        return browser.authorize(authorize_url(stack), REDIRECT)["code"]
    finally:
        browser.close()


def token_request(stack: Stack, headers: dict[str, str] | None = None, **form: str) -> httpx.Response:
    return httpx.post(stack.broker_url + "/oauth/token", data=form, headers=headers)


def redeem(
    stack: Stack, the_code: str, headers: dict[str, str] | None = None, **change: str
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": the_code,
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
        "resource": stack.gateway_url,
    }
    form.update(change)
    return token_request(stack, headers, **form)


def sent_back(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 303, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),  # missing PKCE
        ({"code_challenge_method": "plain"}, "invalid_request"),  # plain PKCE
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"resource": "http://127.0.0.1:1/mcp"}, "invalid_target"),  # RFC 8707
        ({"scope": "tool:call@tickets"}, "invalid_scope"),
        ({"scope": "admin"}, "invalid_scope"),
    ],
)
def test_bad_authorization_request_is_sent_back_with_its_error(stack: Stack, change, error):
    """RFC 6749 §4.1.2.1: refused back to a known redirect URI with `error`, `state`, `iss`."""
    with capture_events() as events:
        back = sent_back(httpx.get(authorize_url(stack, **change)))
    assert back["error"] == error and back["state"] == "st-1" and back["iss"] == stack.issuer
    assert error in refusals(events)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"redirect_uri": "http://127.0.0.1:5555/other"}, "invalid_request"),
        ({"redirect_uri": "https://attacker.example/callback"}, "invalid_request"),
        ({"client_id": "unknown-client"}, "invalid_client"),
        ({"client_id": "https://127.0.0.1/client.json"}, "invalid_client"),  # CIMD at a loopback address
        ({"client_id": "https://10.0.0.7/client.json"}, "invalid_client"),  # CIMD at a private address
    ],
)
def test_untrusted_client_or_redirect_is_never_redirected_to(stack: Stack, change, error):
    """A redirect URI that does not match exactly, or a client that cannot be trusted: an error page."""
    with capture_events() as events:
        r = httpx.get(authorize_url(stack, **change))
    assert r.status_code in (400, 401) and "location" not in r.headers
    assert error in r.text and error in refusals(events)


def test_code_for_token_and_replayed_code_revokes_the_task(stack: Stack):
    """A code redeems once; replaying it is invalid_grant and revokes the task (RFC 6749 §4.1.2)."""
    code = code_for(stack)
    first = redeem(stack, code)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "tool:call@time"
    claims = verify_jwt(
        body["access_token"],
        key_for=lambda h, c: stack.rt.keys.verification_key(h["kid"]),
        algorithms=("ES256",),
        audience=stack.gateway_url,
        issuer=ANY,
        typ=None,
        leeway=5,
    )
    assert claims["client_id"] == CLIENT_ID and claims["aud"] == stack.gateway_url
    with capture_events() as events:
        again = redeem(stack, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    task, _ = stack.rt.broker.get_task(claims["txn"])
    assert task.state is TaskState.REVOKED
    assert "invalid_grant" in refusals(events)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_verifier": "wrong-" + "y" * 40}, "invalid_grant"),
        ({"redirect_uri": "http://127.0.0.1:5556/callback"}, "invalid_grant"),
        ({"client_id": "unknown-client"}, "invalid_client"),
        ({"resource": "http://127.0.0.1:1/mcp"}, "invalid_target"),
        ({"code": "not-a-code"}, "invalid_grant"),
    ],
)
def test_bad_code_redemption(stack: Stack, change, error):
    """Each binding of the code is checked at the token endpoint."""
    r = redeem(stack, code_for(stack), **change)
    assert r.status_code in (400, 401) and r.json()["error"] == error


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("grant_type=authorization_code&grant_type=authorization_code", "invalid_request"),  # RFC 6749 §3.1
        ("grant_type=client_credentials", "unsupported_grant_type"),
        ("grant_type=password&username=a&password=b", "unsupported_grant_type"),
        ("", "invalid_request"),
    ],
)
def test_token_endpoint_refuses_malformed_requests(stack: Stack, body, error):
    """Repeated, missing or unsupported parameters: the RFC's error, never a 5xx."""
    r = httpx.post(
        stack.broker_url + "/oauth/token",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and r.json()["error"] == error
    assert r.headers["cache-control"] == "no-store"


def refresh(stack: Stack, token: str, client_id: str = CLIENT_ID) -> httpx.Response:
    return token_request(stack, grant_type="refresh_token", refresh_token=token, client_id=client_id)


def test_refresh_tokens_rotate_and_a_replay_revokes_the_task(stack: Stack):
    """OAuth 2.1 §4.3.1: each refresh token is good once; replaying a rotated one revokes the task."""
    first = redeem(stack, code_for(stack)).json()
    second = refresh(stack, first["refresh_token"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert (
        body["refresh_token"] != first["refresh_token"]
        and mcp_list(stack, body["access_token"]).status_code == 200
    )
    assert (
        refresh(stack, body["refresh_token"], client_id="unknown-client").json()["error"] == "invalid_client"
    )
    with capture_events() as events:
        replay = refresh(stack, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert any(e.type == "task.revoked" for e in events)
    assert mcp_list(stack, body["access_token"]).status_code == 401


def test_refresh_after_task_close_is_invalid_grant(stack: Stack):
    """A refresh token never outlives its task: after close, refresh is refused."""
    first = redeem(stack, code_for(stack)).json()
    task_id = verify_jwt(
        first["access_token"],
        key_for=lambda h, c: stack.rt.keys.verification_key(h["kid"]),
        algorithms=("ES256",),
        audience=stack.gateway_url,
        issuer=ANY,
        typ=None,
        leeway=5,
    )["txn"]
    stack.rt.broker.close_task(task_id, by="operator")
    r = refresh(stack, first["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_access_token_is_shorter_than_the_task(stack: Stack):
    """Access tokens live `oauth.access_token_ttl_seconds` at most; the refresh token carries on."""
    body = redeem(stack, code_for(stack)).json()
    assert body["expires_in"] <= 900 and body["refresh_token"]


def test_revoking_the_refresh_token_closes_the_task(stack: Stack):
    """RFC 7009 with a refresh token: the task ends, and with it the access token."""
    body = redeem(stack, code_for(stack)).json()
    r = httpx.post(
        stack.broker_url + "/oauth/revoke", data={"token": body["refresh_token"], "client_id": CLIENT_ID}
    )
    assert r.status_code == 200
    assert mcp_list(stack, body["access_token"]).status_code == 401


def test_token_endpoint_refuses_json(stack: Stack):
    """The token endpoint takes form data only."""
    r = httpx.post(stack.broker_url + "/oauth/token", json={"grant_type": "authorization_code"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def consent_page(stack: Stack) -> tuple[Browser, httpx.Response]:
    browser = Browser(stack)
    page = browser.sign_in_and_open_consent(authorize_url(stack), REDIRECT)
    assert isinstance(page, httpx.Response) and page.status_code == 200
    return browser, page


def test_replayed_consent_form_is_refused(stack: Stack):
    """A consent form is good once: posting it again opens no second task."""
    browser, page = consent_page(stack)
    assert isinstance(browser.consent(page, REDIRECT), str)
    with capture_events() as events:
        again = browser.consent(page, REDIRECT)
    assert isinstance(again, httpx.Response) and again.status_code == 400
    assert not [e for e in events if e.type == "task.opened"]
    assert "invalid_request" in refusals(events)


def test_cross_site_consent_post_is_refused(stack: Stack):
    """CSRF: a consent posted from another origin is refused and opens nothing."""
    browser, page = consent_page(stack)
    fields = next(f for f in parse_page(page.text).forms if f["id"] == "consent")["fields"]
    form = {**fields, "decision": "approve"}
    with capture_events() as events:
        r = browser.http.post(
            stack.broker_url + "/console/oauth/consent", data=form, headers={"origin": "https://evil.example"}
        )
        no_token = browser.http.post(
            stack.broker_url + "/console/oauth/consent",
            data={**form, "csrf": "forged"},
            headers={"origin": stack.broker_url},
        )
    assert r.status_code == 403 and no_token.status_code == 403
    assert not [e for e in events if e.type == "task.opened"]
    assert refusals(events).count("access_denied") == 2


def test_denied_consent_is_access_denied(stack: Stack):
    """The human says no: the client gets `access_denied` with its state."""
    browser, page = consent_page(stack)
    back = browser.consent(page, REDIRECT, decision="deny")
    assert isinstance(back, str)
    query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    assert query["error"] == "access_denied" and query["state"] == "st-1"


def test_consent_lifetime_above_the_cap_is_refused(stack: Stack):
    """The lifetime is capped by `oauth.max_lifetime_seconds`; a bigger one is refused."""
    browser, page = consent_page(stack)
    back = browser.consent(page, REDIRECT, lifetime="99999")
    assert isinstance(back, str) and "error=invalid_request" in back


def test_consent_offers_only_what_policy_allows_the_intent(stack: Stack):
    """For an intent policy forbids OAuth clients, the page offers nothing to approve."""
    browser = Browser(stack)
    page = browser.sign_in_and_open_consent(authorize_url(stack, intent="billing.refund"), REDIRECT)
    assert isinstance(page, httpx.Response)
    assert 'id="nothing-allowed"' in page.text and 'value="approve"' not in page.text
    ok = browser.http.get(authorize_url(stack, intent="support.triage"))
    assert 'value="tool:call@time"' in ok.text


def mcp_list(stack: Stack, token: str) -> httpx.Response:
    return httpx.post(
        stack.gateway_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={**MCP_HEADERS, "authorization": f"Bearer {token}"},
    )


def test_revocation_closes_the_task_and_its_token_stops_working(stack: Stack):
    """RFC 7009: the client revokes its token → its task is closed → the next call is a 401."""
    token = redeem(stack, code_for(stack)).json()["access_token"]
    assert mcp_list(stack, token).status_code == 200
    wrong = httpx.post(stack.broker_url + "/oauth/revoke", data={"token": token, "client_id": "someone-else"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    with capture_events() as events:
        r = httpx.post(stack.broker_url + "/oauth/revoke", data={"token": token, "client_id": CLIENT_ID})
    assert r.status_code == 200
    assert [e.payload["by"] for e in events if e.type == "task.closed"] == [f"oauth-client:{CLIENT_ID}"]
    refused = mcp_list(stack, token)
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
    garbage = httpx.post(
        stack.broker_url + "/oauth/revoke", data={"token": "garbage", "client_id": CLIENT_ID}
    )
    assert garbage.status_code == 200  # RFC 7009 §2.2: an invalid token is no error


def svid(stack: Stack, path: str) -> str:
    return DOMAIN.svid(DOMAIN.spiffe_id(path), stack.rt.settings.broker_audience)


def exchange(stack: Stack, **params: str) -> Any:
    with OAuth2Client(token_endpoint_auth_method="none") as client:
        return client.fetch_token(stack.broker_url + "/oauth/token", grant_type=TOKEN_EXCHANGE, **params)


def test_token_exchange_with_a_generic_oauth_library(stack: Stack):
    """RFC 8693 via Authlib: a JWT-SVID (and an actor token) → a task token for the gateway."""
    token = exchange(
        stack,
        subject_token=svid(stack, "billing-bot"),
        subject_token_type=JWT_TOKEN_TYPE,
        actor_token=svid(stack, "orchestrator"),
        actor_token_type=JWT_TOKEN_TYPE,
        resource=stack.gateway_url,
        scope="tool:call@time",
        intent="support.triage",
        ttl_seconds="300",
    )
    assert token["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert token["token_type"].lower() == "bearer" and 0 < token["expires_in"] <= 300
    claims = verify_jwt(
        token["access_token"],
        key_for=lambda h, c: stack.rt.keys.verification_key(h["kid"]),
        algorithms=("ES256",),
        audience=stack.gateway_url,
        issuer=ANY,
        typ=None,
        leeway=5,
    )
    assert claims["sub"] == DOMAIN.spiffe_id("billing-bot")
    assert claims["act"] == {"sub": DOMAIN.spiffe_id("orchestrator")}  # RFC 8693 §4.1
    assert mcp_list(stack, token["access_token"]).status_code == 200


def test_token_exchange_with_an_oidc_subject_token(stack: Stack):
    """RFC 8693 with an OIDC token of a configured issuer (a CI job) as `subject_token`."""
    now = int(time.time())
    id_token = sign_jwt(
        {"iss": stack.idp.issuer, "sub": "ci-runner", "aud": "tether-broker", "iat": now, "exp": now + 120},
        stack.idp.key,
        kid=stack.idp.kid,
        typ="JWT",
    )
    token = exchange(
        stack,
        subject_token=id_token,
        subject_token_type=ID_TOKEN_TYPE,
        scope="tool:call@time",
        intent="support.triage",
    )
    claims = verify_jwt(
        token["access_token"],
        key_for=lambda h, c: stack.rt.keys.verification_key(h["kid"]),
        algorithms=("ES256",),
        audience=stack.rt.settings.broker_audience,  # no resource named: a task token for the broker
        issuer=ANY,
        typ=None,
        leeway=5,
    )
    assert claims["sub"] == f"spiffe://{stack.rt.settings.trust_domain}/ci/ci-runner"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"subject_token": "not-a-jwt"}, "invalid_request"),
        ({"subject_token_type": "urn:x"}, "invalid_request"),
        ({"resource": "http://127.0.0.1:1/mcp"}, "invalid_target"),
        ({"scope": "tool:call@billing"}, "invalid_scope"),  # policy does not allow this task
        ({"scope": ""}, "invalid_scope"),
        ({"intent": ""}, "invalid_request"),
        ({"intent": "no.such.intent"}, "invalid_request"),
        ({"actor_token": "forged"}, "invalid_request"),
    ],
)
def test_bad_token_exchange(stack: Stack, change, error):
    """Every bad exchange is refused with its RFC 8693 error, and audited."""
    params = {
        "subject_token": svid(stack, "billing-bot"),
        "subject_token_type": JWT_TOKEN_TYPE,
        "resource": stack.gateway_url,
        "scope": "tool:call@time",
        "intent": "support.triage",
    }
    if "actor_token" in change:
        params["actor_token_type"] = JWT_TOKEN_TYPE
    params.update(change)
    with capture_events() as events, pytest.raises(AuthlibError) as exc:
        exchange(stack, **{k: v for k, v in params.items() if v})
    assert exc.value.error == error
    assert error in refusals(events)


def test_dpop_bound_tokens_when_the_client_offers_a_proof(stack: Stack):
    """RFC 9449: a proof at the token endpoint binds the access and refresh tokens to its key."""
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    token_url = stack.broker_url + "/oauth/token"
    body = redeem(stack, code_for(stack), {"DPoP": make_proof(key, "POST", token_url)}).json()
    assert body["token_type"] == "DPoP"
    claims = verify_jwt(
        body["access_token"],
        key_for=lambda h, c: stack.rt.keys.verification_key(h["kid"]),
        algorithms=("ES256",),
        audience=stack.gateway_url,
        issuer=ANY,
        typ=None,
        leeway=5,
    )
    assert claims["cnf"]["jkt"] == thumbprint(key)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "get_current_time", "arguments": {"timezone": "Europe/Paris"}},
    }
    auth = {**MCP_HEADERS, "authorization": f"DPoP {body['access_token']}"}
    bound = httpx.post(
        stack.gateway_url,
        json=call,
        headers={
            **auth,
            "DPoP": make_proof(key, "POST", stack.gateway_url, access_token=body["access_token"]),
        },
    )
    assert bound.status_code == 200 and bound.json()["result"]["isError"] is False, bound.text
    stolen = httpx.post(stack.gateway_url, json=call, headers=auth)  # the token alone is not enough
    assert stolen.json()["result"]["isError"] is True
    assert stolen.json()["result"]["_meta"]["tether"]["code"] == "dpop_proof_missing"
    wrong = token_request(
        stack,
        {"DPoP": make_proof(other, "POST", token_url)},
        grant_type="refresh_token",
        refresh_token=body["refresh_token"],
        client_id=CLIENT_ID,
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_dpop_proof"


def test_bad_dpop_proof_at_the_token_endpoint_keeps_the_code(stack: Stack):
    """A proof for another URL is invalid_dpop_proof, and the code is not spent by it."""
    code = code_for(stack)
    key = ec.generate_private_key(ec.SECP256R1())
    bad = redeem(stack, code, {"DPoP": make_proof(key, "POST", "https://elsewhere.example/token")})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_dpop_proof"
    assert redeem(stack, code).status_code == 200

"""The resource-server ASGI middleware: offline verification plus the revocation feed."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tether.credentials.middleware import FeedSource, JwksKeys, RevocationFollower, TetherAuthMiddleware
from tether.identity.jwt import b64url_encode


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.scope["tether"]["sub"], "txn": request.scope["tether"]["txn"]})


def _service(runtime, audience="tickets", max_staleness=30.0):
    follower = RevocationFollower(FeedSource(runtime.credentials.feed), max_staleness=max_staleness)
    follower.poll_once()
    app = TetherAuthMiddleware(
        Starlette(routes=[Route("/me", whoami)]),
        audience=audience,
        issuer=runtime.settings.broker_issuer,
        keys=JwksKeys(runtime.keys.jwks),
        follower=follower,
    )
    return TestClient(app), follower


def _cred(agent):
    t = agent.open([{"action": "read", "resource": "tickets.queue"}]).json()
    body = agent.authorize(t["task_token"], "read", "tickets.queue").json()
    return t, body["credential"]


def _get(svc, token):
    return svc.get("/me", headers={"Authorization": f"Bearer {token}"})


def test_valid_credential_passes_with_claims(agent, runtime):
    """A live credential for this service reaches the app with its claims in scope."""
    t, cred = _cred(agent)
    svc, _ = _service(runtime)
    r = _get(svc, cred["token"])
    assert r.status_code == 200 and r.json() == {"sub": agent.spiffe_id, "txn": t["task_id"]}


def test_credential_for_another_service_is_rejected(agent, runtime):
    """A tickets credential replayed at the crm service is refused (`bad_audience`)."""
    _, cred = _cred(agent)
    svc, _ = _service(runtime, audience="crm")
    r = _get(svc, cred["token"])
    assert r.status_code == 401 and r.json()["code"] == "bad_audience"


def test_task_token_is_not_an_access_token(agent, runtime):
    """The agent's task token does not pass as a resource credential (`bad_typ`)."""
    t, _ = _cred(agent)
    svc, _ = _service(runtime)
    r = _get(svc, t["task_token"])
    assert r.status_code == 401 and r.json()["code"] == "bad_typ"


def test_alg_none_forgery_is_rejected(agent, runtime):
    """An unsigned copy of a credential (`alg: none`) is refused."""
    _, cred = _cred(agent)
    header = b64url_encode(b'{"alg":"none","typ":"at+jwt"}')
    forged = f"{header}.{cred['token'].split('.')[1]}."
    svc, _ = _service(runtime)
    assert _get(svc, forged).status_code == 401


def test_closed_task_credential_rejected_after_feed_poll(agent, runtime):
    """After the task closes, the next feed poll makes the middleware refuse its credential."""
    t, cred = _cred(agent)
    svc, follower = _service(runtime)
    assert _get(svc, cred["token"]).status_code == 200
    runtime.broker.close_task(t["task_id"], by="test")
    follower.poll_once()
    r = _get(svc, cred["token"])
    assert r.status_code == 401 and r.json()["code"] == "token_revoked"


def test_stale_feed_fails_closed(agent, runtime):
    """A follower that has not synced within its bound makes every request a 503."""
    _, cred = _cred(agent)
    svc, follower = _service(runtime, max_staleness=0.0)
    follower._synced = float("-inf")
    r = _get(svc, cred["token"])
    assert r.status_code == 503 and r.json()["code"] == "revocation_feed_stale"


def test_missing_token_is_401(runtime):
    """No Authorization header: 401 `missing_token`."""
    svc, _ = _service(runtime)
    r = svc.get("/me")
    assert r.status_code == 401 and r.json()["code"] == "missing_token"


def test_middleware_refuses_permissive_construction():
    """Audience and issuer are required: no permissive default."""
    with pytest.raises(ValueError):
        TetherAuthMiddleware(
            lambda *a: None,
            audience="",
            issuer="x",
            keys=JwksKeys(dict),
            follower=RevocationFollower(FeedSource(None)),
        )  # type: ignore[arg-type]


def test_http_follower_over_the_broker_api(agent, client, runtime):
    """The HTTP feed source follows /v1/revocations with a JWT-SVID."""
    from tether.credentials.middleware import HttpFeedSource

    t, _ = _cred(agent)
    runtime.broker.close_task(t["task_id"], by="test")
    follower = RevocationFollower(HttpFeedSource("http://testserver", agent.svid, client=client))
    follower.poll_once()
    assert follower.is_revoked(None, t["task_id"])


def test_duplicate_authorization_headers_are_refused(agent, runtime):
    """Two Authorization headers (header smuggling between proxies) are a 401."""
    _, cred = _cred(agent)
    svc, _ = _service(runtime)
    r = svc.get("/me", headers=[("Authorization", f"Bearer {cred['token']}"), ("Authorization", "Bearer x")])
    assert r.status_code == 401 and r.json()["code"] == "missing_token"

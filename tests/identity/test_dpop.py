"""DPoP-bound task tokens through the HTTP API (RFC 9449): a stolen token without its key is useless."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient

from tether.identity.dpop import make_proof, thumbprint
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import TestTrustDomain, capture_events, make_settings

BASE = "http://testserver"
SCOPE = [{"action": "read", "resource": "tickets.queue"}]
AUTHZ = {"action": "read", "resource": "tickets.queue"}


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class BoundAgent:
    def __init__(self, client: TestClient, domain: TestTrustDomain, rt: Runtime) -> None:
        self.client, self.domain, self.rt, self.key = client, domain, rt, new_key()

    def open(self, *, proof: bool = True) -> Any:
        svid = self.domain.svid("bound", self.rt.settings.broker_audience)
        headers = {"Authorization": f"Bearer {svid}"}
        if proof:
            headers["DPoP"] = make_proof(self.key, "POST", BASE + "/v1/tasks")
        return self.client.post(
            "/v1/tasks",
            headers=headers,
            json={"intent": "support.triage", "scope": SCOPE, "ttl_seconds": 300},
        )

    def authorize(
        self,
        token: str,
        *,
        key: Any = "mine",
        method: str = "POST",
        url: str = BASE + "/v1/authorize",
        proof: str | None = None,
        ath_token: str | None = None,
    ) -> Any:
        headers = {"Authorization": f"DPoP {token}"}
        if proof is None and key is not None:
            signer = self.key if key == "mine" else key
            proof = make_proof(signer, method, url, access_token=ath_token or token)
        if proof is not None:
            headers["DPoP"] = proof
        return self.client.post("/v1/authorize", headers=headers, json=AUTHZ)


@pytest.fixture
def bound(client: TestClient, domain: TestTrustDomain, runtime: Runtime) -> BoundAgent:
    return BoundAgent(client, domain, runtime)


def opened(agent: BoundAgent) -> str:
    r = agent.open()
    assert r.status_code == 201, r.text
    token: str = r.json()["task_token"]
    return token


def denied(events: list[Any], code: str) -> bool:
    return any(
        e.type == "decision" and e.payload.get("outcome") == "deny" and e.payload.get("code") == code
        for e in events
    )


def test_proof_at_open_binds_token_to_key(bound: BoundAgent, runtime: Runtime) -> None:
    """A proof at task open puts cnf.jkt (the key's thumbprint) in the token and the task."""
    token = opened(bound)
    claims = runtime.broker.tokens.verify(token, now=time.time())
    assert claims.jkt == thumbprint(bound.key)


def test_bound_token_with_fresh_proof_is_decided(bound: BoundAgent) -> None:
    """The holder of the key gets a decision, not a 401."""
    r = bound.authorize(opened(bound))
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text


def test_stolen_token_without_proof_is_useless(bound: BoundAgent) -> None:
    """A bound token presented without a proof: 401 dpop_proof_missing, audited."""
    token = opened(bound)
    with capture_events() as events:
        r = bound.authorize(token, key=None)
    assert (r.status_code, r.json()["code"]) == (401, "dpop_proof_missing")
    assert denied(events, "dpop_proof_missing")


def test_token_replayed_with_a_different_dpop_key(bound: BoundAgent) -> None:
    """A thief's own key signs a perfect proof, but not the bound key: dpop_key_mismatch, audited."""
    token = opened(bound)
    with capture_events() as events:
        r = bound.authorize(token, key=new_key())
    assert (r.status_code, r.json()["code"]) == (401, "dpop_key_mismatch")
    assert denied(events, "dpop_key_mismatch")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"method": "GET"}, "dpop_method_mismatch"),
        ({"url": BASE + "/v1/tasks"}, "dpop_url_mismatch"),
        ({"url": "http://evil.example/v1/authorize"}, "dpop_url_mismatch"),
    ],
)
def test_dpop_proof_for_another_method_or_url(bound: BoundAgent, kwargs: dict[str, str], code: str) -> None:
    """A proof made for another method or URL is refused and audited."""
    token = opened(bound)
    with capture_events() as events:
        r = bound.authorize(token, **kwargs)  # type: ignore[arg-type]
    assert (r.status_code, r.json()["code"]) == (401, code)
    assert denied(events, code)


def test_dpop_proof_replayed(bound: BoundAgent) -> None:
    """The same proof twice: the second is dpop_replay."""
    token = opened(bound)
    proof = make_proof(bound.key, "POST", BASE + "/v1/authorize", access_token=token)
    assert bound.authorize(token, proof=proof).status_code == 200
    r = bound.authorize(token, proof=proof)
    assert (r.status_code, r.json()["code"]) == (401, "dpop_replay")


def test_dpop_proof_for_another_token(bound: BoundAgent) -> None:
    """ath must hash this token: a proof made for another token is dpop_ath_mismatch."""
    token = opened(bound)
    r = bound.authorize(token, ath_token=opened(bound))
    assert (r.status_code, r.json()["code"]) == (401, "dpop_ath_mismatch")


@pytest.mark.parametrize("age", [-3600, 3600])
def test_dpop_proof_stale_or_from_the_future(bound: BoundAgent, age: int) -> None:
    """iat an hour old or an hour ahead: dpop_stale."""
    token = opened(bound)
    proof = make_proof(bound.key, "POST", BASE + "/v1/authorize", access_token=token, iat=time.time() + age)
    r = bound.authorize(token, proof=proof)
    assert (r.status_code, r.json()["code"]) == (401, "dpop_stale")


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_dpop_proof_unsigned_or_symmetric(bound: BoundAgent, alg: str) -> None:
    """A proof with alg none or HS256 is dpop_invalid."""
    import base64
    import json

    token = opened(bound)
    parts = make_proof(bound.key, "POST", BASE + "/v1/authorize", access_token=token).split(".")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=="))
    header["alg"] = alg
    forged = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    r = bound.authorize(token, proof=f"{forged}.{parts[1]}.")
    assert (r.status_code, r.json()["code"]) == (401, "dpop_invalid")


def test_two_dpop_headers_are_refused(bound: BoundAgent) -> None:
    """Exactly one DPoP header (RFC 9449 section 4.3)."""
    token = opened(bound)
    p = [make_proof(bound.key, "POST", BASE + "/v1/authorize", access_token=token) for _ in range(2)]
    r = bound.client.post(
        "/v1/authorize",
        json=AUTHZ,
        headers=[("Authorization", f"DPoP {token}"), ("DPoP", p[0]), ("DPoP", p[1])],
    )
    assert (r.status_code, r.json()["code"]) == (401, "dpop_invalid")


def test_bound_token_needs_proof_on_task_endpoints(bound: BoundAgent) -> None:
    """GET /v1/tasks/{id} and close also require the proof for a bound token."""
    r = bound.open()
    task_id, token = r.json()["task_id"], r.json()["task_token"]
    r = bound.client.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"DPoP {token}"})
    assert r.status_code == 401
    proof = make_proof(bound.key, "GET", f"{BASE}/v1/tasks/{task_id}", access_token=token)
    r = bound.client.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert r.status_code == 200, r.text


# -- required mode (the `prod` default) ----------------------------------------------------


@pytest.fixture
def strict(tmp_path: Path, store_url: str, domain: TestTrustDomain) -> Iterator[tuple[Runtime, TestClient]]:
    s = make_settings(
        tmp_path / "state",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod", "identity": {"dpop": "auto"}},
    )
    rt = Runtime.start(s)
    with TestClient(create_app(rt), raise_server_exceptions=False) as c:
        yield rt, c
    rt.close()


def test_prod_requires_proof_at_open(strict: tuple[Runtime, TestClient], domain: TestTrustDomain) -> None:
    """dpop = auto in prod: opening a task without a proof is 401 dpop_required, audited."""
    rt, client = strict
    agent = BoundAgent(client, domain, rt)
    with capture_events() as events:
        r = agent.open(proof=False)
    assert (r.status_code, r.json()["code"]) == (401, "dpop_required")
    assert denied(events, "dpop_required")
    assert agent.authorize(opened(agent)).status_code == 200


def test_prod_refuses_unbound_token(strict: tuple[Runtime, TestClient]) -> None:
    """A token minted unbound (e.g. before prod required DPoP) is refused: dpop_required."""
    rt, client = strict
    from tether.broker import OpenTaskRequest
    from tether.model import Grant, Workload

    opened_task = rt.broker.open_task(
        Workload("spiffe://support.example/x", "support.example", "jwt-svid"),
        OpenTaskRequest("support.triage", "", (Grant("read", "tickets.queue"),), 60),
    )
    r = client.post("/v1/authorize", json=AUTHZ, headers={"Authorization": f"Bearer {opened_task.token}"})
    assert (r.status_code, r.json()["code"]) == (401, "dpop_required")


def test_dpop_replay_across_two_brokers_on_one_postgresql(
    tmp_path: Path, pg_url: str, domain: TestTrustDomain
) -> None:
    """Two broker processes sharing PostgreSQL: a proof used on one is a replay on the other."""
    first = make_settings(
        tmp_path / "state",
        store_url=pg_url,
        domain=domain,
        overrides={"environment": "prod", "node_id": "node-1", "identity": {"workload_socket": ""}},
    )
    # Same state directory (same master key), same store, its own audit chain.
    runtimes = [Runtime.start(first), Runtime.start(dataclasses.replace(first, node_id="node-2"))]
    try:
        with TestClient(create_app(runtimes[0])) as c1, TestClient(create_app(runtimes[1])) as c2:
            agent = BoundAgent(c1, domain, runtimes[0])
            token = opened(agent)
            proof = make_proof(agent.key, "POST", BASE + "/v1/authorize", access_token=token)
            assert agent.authorize(token, proof=proof).status_code == 200
            r = c2.post(
                "/v1/authorize", json=AUTHZ, headers={"Authorization": f"DPoP {token}", "DPoP": proof}
            )
            assert (r.status_code, r.json()["code"]) == (401, "dpop_replay")
    finally:
        for rt in runtimes:
            rt.close()

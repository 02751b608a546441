"""OIDC issuers as workload credentials (claim mapping, required claims, subjects) and as
human delegators, against a real loopback issuer serving discovery and JWKS."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient

from tether.errors import Unauthenticated
from tether.identity import public_jwk, sign_jwt
from tether.identity.oidc import render_spiffe_id
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import TestTrustDomain, capture_events, make_settings

AUD = "spiffe://tether.local/tether"
SCOPE = [{"action": "read", "resource": "tickets.queue"}]


class OidcIssuer:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.url = ""
        self.discovery_issuer: str | None = None  # None: the real issuer URL
        self.hits: list[str] = []

    def token(self, aud: str = AUD, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.url,
            "aud": aud,
            "iat": now,
            "exp": now + 300,
            "sub": "repo:acme/web:ref:refs/heads/main",
            "repository": "acme/web",
            "workflow": "deploy",
            "repository_owner": "acme",
            **claims,
        }
        return sign_jwt({k: v for k, v in body.items() if v is not None}, self.key, kid="k1", typ="JWT")


@pytest.fixture
def oidc() -> Iterator[OidcIssuer]:
    iss = OidcIssuer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            iss.hits.append(self.path)
            if self.path == "/.well-known/openid-configuration":
                doc: Any = {"issuer": iss.discovery_issuer or iss.url, "jwks_uri": iss.url + "/jwks"}
            elif self.path == "/jwks":
                doc = {"keys": [public_jwk(iss.key.public_key(), "k1")]}
            else:
                self.send_response(404)
                self.end_headers()
                return
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    iss.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield iss
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str, domain: TestTrustDomain, oidc: OidcIssuer) -> Iterator[TestClient]:
    extra = f'''
[[identity.oidc_issuers]]
issuer = "{oidc.url}"
spiffe_id = "spiffe://support.example/ci/{{repository:path}}/{{workflow}}"
subjects = ["repo:acme/*"]
required_claims = {{ repository_owner = "acme" }}
attributes = {{ repo = "repository" }}

[[identity.delegator_issuers]]
issuer = "{oidc.url}"
audience = "tether-console"
'''
    # The example policies admit `support.example`; CI workloads are mapped into it here.
    s = make_settings(
        tmp_path / "state",
        store_url=sqlite_url,
        domain=domain,
        config_extra=extra,
        overrides={"environment": "prod", "trust_domain": "tether.local"},
    )
    rt = Runtime.start(s)
    with TestClient(create_app(rt), raise_server_exceptions=False) as c:
        yield c
    rt.close()


def open_with(client: TestClient, token: str, **body: Any) -> Any:
    return client.post(
        "/v1/tasks",
        headers={"Authorization": f"Bearer {token}"},
        json={"intent": "support.triage", "scope": SCOPE, "ttl_seconds": 60, **body},
    )


def test_ci_token_maps_to_spiffe_id_and_opens_task(api: TestClient, oidc: OidcIssuer) -> None:
    """A CI token becomes spiffe://…/ci/acme/web/deploy and opens a task (discovery + JWKS)."""
    with capture_events() as events:
        r = open_with(api, oidc.token())
    assert r.status_code == 201, r.text
    opened = next(e for e in events if e.type == "task.opened")
    assert opened.agent == "spiffe://support.example/ci/acme/web/deploy"
    assert opened.payload["attestation"] == "oidc"
    assert oidc.hits == ["/.well-known/openid-configuration", "/jwks"]


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"sub": "repo:evil/web:ref:refs/heads/main"}, "subject_not_allowed"),
        ({"repository_owner": "evil"}, "claim_mismatch"),
        ({"repository_owner": None}, "claim_mismatch"),
        ({"workflow": "a/b"}, "claim_unmappable"),
        ({"workflow": ".."}, "claim_unmappable"),
        ({"repository": "acme/../admin"}, "claim_unmappable"),
        ({"workflow": None}, "claim_unmappable"),
        ({"aud": "someone-else"}, "bad_audience"),
        (
            {"iss": "http://127.0.0.1:1"},
            "bad_subject",
        ),  # unknown issuer → read as an SVID, sub is no SPIFFE ID
    ],
)
def test_ci_token_with_bad_claims_is_refused(
    api: TestClient, oidc: OidcIssuer, claims: dict[str, Any], code: str
) -> None:
    """Wrong subject, required claim, unsafe mapped claim or audience → 401 with a code, audited."""
    with capture_events() as events:
        r = open_with(api, oidc.token(**claims))
    assert (r.status_code, r.json()["code"]) == (401, code)
    assert any(e.type == "decision" and e.payload.get("code") == code for e in events)


def test_issuer_prefix_and_suffix_tricks(api: TestClient, oidc: OidcIssuer) -> None:
    """iss with a trailing slash or a suffix is another issuer: never the configured one."""
    for iss in (oidc.url + "/", oidc.url + ".evil.example", oidc.url[:-1]):
        r = open_with(api, oidc.token(iss=iss))
        assert r.status_code == 401, iss


def test_discovery_naming_another_issuer_fails_closed(api: TestClient, oidc: OidcIssuer) -> None:
    """A discovery document for another issuer is refused: 503 issuer_unavailable, nothing allowed."""
    oidc.discovery_issuer = "https://accounts.evil.example"
    r = open_with(api, oidc.token())
    assert (r.status_code, r.json()["code"]) == (503, "issuer_unavailable")


def test_delegator_id_token_names_the_human(
    api: TestClient, oidc: OidcIssuer, domain: TestTrustDomain
) -> None:
    """delegator_token: its sub and issuer go into the task and the audit record."""
    id_token = oidc.token(aud="tether-console", sub="alice@example.com")
    svid = domain.svid("orchestrator", AUD)
    with capture_events() as events:
        r = open_with(api, svid, delegator_token=id_token)
    assert r.status_code == 201, r.text
    opened = next(e for e in events if e.type == "task.opened")
    assert opened.delegator == f"{oidc.url}#alice@example.com"
    assert opened.payload["delegator"] == {"sub": "alice@example.com", "iss": oidc.url}


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"aud": AUD}, "bad_audience"),
        ({"exp": 1}, "token_expired"),
        ({"iss": "https://other.example"}, "delegator_untrusted"),
    ],
)
def test_bad_delegator_token_is_refused(
    api: TestClient, oidc: OidcIssuer, domain: TestTrustDomain, claims: dict[str, Any], code: str
) -> None:
    """A delegator token for another audience, expired, or from an unknown issuer → 401, audited."""
    with capture_events() as events:
        r = open_with(
            api,
            domain.svid("orchestrator", AUD),
            delegator_token=oidc.token(**{"aud": "tether-console", **claims}),
        )
    assert (r.status_code, r.json()["code"]) == (401, code)
    assert any(e.type == "decision" and e.payload.get("code") == code for e in events)


def test_template_cannot_be_reshaped_by_claims() -> None:
    """Single-segment placeholders refuse `/`; a :path placeholder refuses `..` and empty segments."""
    t = "spiffe://td/ci/{repo:path}/{wf}"
    assert render_spiffe_id(t, {"repo": "a/b", "wf": "c"}, "td") == "spiffe://td/ci/a/b/c"
    for claims in (
        {"repo": "a//b", "wf": "c"},
        {"repo": "a", "wf": "b/c"},
        {"repo": "../x", "wf": "c"},
        {"repo": "a", "wf": "c?x"},
        {"repo": "a", "wf": True},
    ):
        with pytest.raises(Unauthenticated):
            render_spiffe_id(t, claims, "td")

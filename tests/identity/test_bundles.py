"""SPIFFE bundle endpoint (validated by the independent `spiffe` package) and bundle refresh:
refresh hint honoured, unknown kid refetched at most once per interval. Real loopback server."""

from __future__ import annotations

import http.server
import json
import os
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import JwtBundle, JwtSvid, TrustDomain
from starlette.testclient import TestClient

from tether.errors import Unauthenticated
from tether.identity import SvidVerifier, TrustBundles, admin_ops, public_jwk, sign_jwt
from tether.runtime import Runtime
from tether.sdk import workload as workload_client
from tether.server.admin import Operator

AUD = "spiffe://tether.local/tether"


def test_bundle_endpoint_has_spiffe_members(client: TestClient, runtime: Runtime) -> None:
    """/.well-known/spiffe-bundle: JWT authorities (use jwt-svid), spiffe_sequence, refresh hint."""
    doc = client.get("/.well-known/spiffe-bundle").json()
    assert doc["spiffe_refresh_hint"] > 0 and doc["spiffe_sequence"] > 0
    assert [(k["kid"], k["use"]) for k in doc["keys"]] == [(runtime.keys.signing_key().kid, "jwt-svid")]


def test_tether_svid_validates_with_spiffe_package(client: TestClient, runtime: Runtime) -> None:
    """An SVID from the Workload API validates with py-spiffe given only tether's bundle."""
    admin_ops.register(
        runtime,
        {"spiffe_id": "spiffe://tether.local/agents/interop", "selectors": [f"unix:uid:{os.getuid()}"]},
        Operator(0, 1),
    )
    token = workload_client.fetch_svid(runtime.workload_socket, audience="https://service.example")
    bundle = JwtBundle.parse(TrustDomain("tether.local"), client.get("/.well-known/spiffe-bundle").content)
    svid = JwtSvid.parse_and_validate(token, bundle, {"https://service.example"})
    assert str(svid.spiffe_id) == "spiffe://tether.local/agents/interop"


# -- refresh from a bundle URL -------------------------------------------------------------


class Issuer:
    """A SPIRE-like bundle endpoint on loopback that counts its requests."""

    def __init__(self, refresh_hint: int | None = 10) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.hint, self.hits = refresh_hint, 0
        self.rotate()

    def rotate(self) -> str:
        kid = secrets.token_hex(4)
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        return kid

    def doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "keys": [{**public_jwk(k.public_key(), kid), "use": "jwt-svid"} for kid, k in self.keys.items()]
        }
        if self.hint is not None:
            d.update(spiffe_sequence=len(self.keys), spiffe_refresh_hint=self.hint)
        return d

    def svid(self, kid: str, now: float) -> str:
        claims = {"sub": "spiffe://spire.example/w", "aud": [AUD], "exp": int(now) + 60, "iat": int(now)}
        return sign_jwt(claims, self.keys[kid], kid=kid, typ="JWT")


@pytest.fixture
def issuer() -> Iterator[tuple[Issuer, str]]:
    iss = Issuer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            iss.hits += 1
            body = json.dumps(iss.doc()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield iss, f"http://127.0.0.1:{server.server_address[1]}/bundle"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(url: str, clock: Clock) -> SvidVerifier:
    tb = TrustBundles(clock=clock, cache_seconds=300, retry_seconds=30)
    tb.add_jwks_url("spire.example", url)
    return SvidVerifier(tb, AUD, 30)


def test_bundle_refetched_after_refresh_hint(issuer: tuple[Issuer, str]) -> None:
    """spiffe_refresh_hint (10 s) governs refetch, not the 300 s default cache."""
    iss, url = issuer
    clock = Clock()
    v = verifier(url, clock)
    kid = next(iter(iss.keys))
    v.verify(iss.svid(kid, 1_700_000_000), now=1_700_000_000)
    clock.now += 5
    v.verify(iss.svid(kid, 1_700_000_000), now=1_700_000_000)
    assert iss.hits == 1
    clock.now += 6
    v.verify(iss.svid(kid, 1_700_000_000), now=1_700_000_000)
    assert iss.hits == 2


def test_rotated_key_is_picked_up_by_unknown_kid_refetch(issuer: tuple[Issuer, str]) -> None:
    """A new kid triggers one early refetch, so a rotation is accepted at once."""
    iss, url = issuer
    clock = Clock()
    v = verifier(url, clock)
    v.verify(iss.svid(next(iter(iss.keys)), 1_700_000_000), now=1_700_000_000)
    clock.now += 31
    new = iss.rotate()
    assert v.verify(iss.svid(new, 1_700_000_000), now=1_700_000_000).spiffe_id == "spiffe://spire.example/w"
    assert iss.hits == 2


def test_unknown_kid_flood_is_rate_limited(issuer: tuple[Issuer, str]) -> None:
    """100 tokens with made-up kids cause at most one extra fetch per retry interval."""
    iss, url = issuer
    clock = Clock()
    v = verifier(url, clock)
    attacker = ec.generate_private_key(ec.SECP256R1())
    for _ in range(100):
        token = sign_jwt(
            {"sub": "spiffe://spire.example/w", "aud": AUD, "exp": 1_700_000_060},
            attacker,
            kid=secrets.token_hex(8),
            typ="JWT",
        )
        with pytest.raises(Unauthenticated) as info:
            v.verify(token, now=1_700_000_000)
        assert info.value.code == "unknown_kid"
        clock.now += 0.1  # 10 s of flood in total, inside one 30 s retry interval
    assert iss.hits == 1

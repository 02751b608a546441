"""JWT-SVID verification and trust bundle loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import tether.identity
from tether.config import TrustBundle
from tether.errors import ConfigError, Unauthenticated, Unavailable
from tether.identity import SvidVerifier, TrustBundles, public_jwk, sign_jwt
from tether.identity.jwt import b64url_encode
from tether.model import Workload

NOW = 1_700_000_000
AUD = "spiffe://tether.local/tether"
AGENT = "spiffe://example.org/ns/prod/agent"


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def svid(key: Any, *, kid: str = "k1", typ: str = "JWT", alg: str = "ES256", **over: Any) -> str:
    claims = {"sub": AGENT, "aud": [AUD], "exp": NOW + 300, "iat": NOW, **over}
    return sign_jwt({k: v for k, v in claims.items() if v is not None}, key, kid=kid, typ=typ, alg=alg)


def verifier(key: Any, issuer: str | None = None) -> SvidVerifier:
    bundles = TrustBundles()
    bundles.add_jwks("example.org", {"keys": [public_jwk(key.public_key(), "k1")]}, issuer=issuer)
    return SvidVerifier(bundles, AUD, 30)


def code_of(v: SvidVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        v.verify(token, now=NOW)
    return info.value.code


def test_public_api_is_pinned() -> None:
    """tether.identity exports exactly the documented names."""
    assert sorted(tether.identity.__all__) == [
        "ANY",
        "KeyLookup",
        "KeysProvider",
        "SUPPORTED_ALGORITHMS",
        "SpiffeId",
        "SvidVerifier",
        "TrustBundles",
        "jwk_thumbprint",
        "load_jwk",
        "parse_jwks",
        "parse_spiffe_id",
        "public_jwk",
        "sign_jwt",
        "valid_trust_domain",
        "verify_jwt",
    ]


def test_valid_svid_gives_workload(key: ec.EllipticCurvePrivateKey) -> None:
    """A valid JWT-SVID yields the Workload with attestation jwt-svid."""
    assert verifier(key).verify(svid(key), now=NOW) == Workload(
        spiffe_id=AGENT, trust_domain="example.org", attestation="jwt-svid"
    )


@pytest.mark.parametrize("alg", ["RS256", "PS512"])
def test_rsa_svids(alg: str) -> None:
    """RS and PS algorithms are accepted for RSA bundle keys."""
    rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert verifier(rkey).verify(svid(rkey, alg=alg), now=NOW).spiffe_id == AGENT


@pytest.mark.parametrize("typ", ["JWT", "JOSE", "jose"])
def test_typ_jwt_or_jose(key: ec.EllipticCurvePrivateKey, typ: str) -> None:
    """typ JWT or JOSE (any case) is accepted."""
    assert verifier(key).verify(svid(key, typ=typ), now=NOW).spiffe_id == AGENT


def test_typ_absent_is_accepted(key: ec.EllipticCurvePrivateKey) -> None:
    """JWT-SVID makes typ optional, so a token without it verifies."""
    payload = svid(key).split(".")[1]
    header = b64url_encode(json.dumps({"alg": "ES256", "kid": "k1"}).encode())
    der = key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    token = f"{header}.{payload}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    assert verifier(key).verify(token, now=NOW).spiffe_id == AGENT


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"sub": None}, "bad_subject"),
        ({"sub": "agent-7"}, "bad_subject"),
        ({"sub": 7}, "bad_subject"),
        ({"sub": "spiffe://example.org"}, "bad_subject"),
        ({"aud": None}, "bad_audience"),
        ({"aud": ["spiffe://tether.local/other"]}, "bad_audience"),
        ({"exp": None}, "claim_invalid"),
        ({"exp": NOW - 31}, "token_expired"),
    ],
)
def test_svid_claim_rules(key: ec.EllipticCurvePrivateKey, over: dict[str, Any], code: str) -> None:
    """sub must be a workload SPIFFE ID; aud must name the broker; exp is required."""
    assert code_of(verifier(key), svid(key, **over)) == code


def test_unknown_kid_in_trusted_domain(key: ec.EllipticCurvePrivateKey) -> None:
    """A kid absent from the domain's bundle is unknown_kid."""
    assert code_of(verifier(key), svid(key, kid="k2")) == "unknown_kid"


def test_issuer_checked_only_when_configured(key: ec.EllipticCurvePrivateKey) -> None:
    """With a bundle issuer, iss must match exactly; without one, iss is not required."""
    assert verifier(key).verify(svid(key, iss="anything"), now=NOW).spiffe_id == AGENT
    pinned = verifier(key, issuer="https://spire.example.org")
    assert pinned.verify(svid(key, iss="https://spire.example.org"), now=NOW)
    assert code_of(pinned, svid(key, iss="https://spire.example.org/")) == "bad_issuer"
    assert code_of(pinned, svid(key)) == "bad_issuer"


def test_hs256_and_ed25519_not_allowed(key: ec.EllipticCurvePrivateKey) -> None:
    """Algorithms outside RS/ES/PS are alg_not_allowed."""
    for alg in ("HS256", "EdDSA", "none"):
        h = b64url_encode(json.dumps({"alg": alg, "kid": "k1"}).encode())
        p = svid(key).split(".")[1]
        assert code_of(verifier(key), f"{h}.{p}.AAAA") == "alg_not_allowed"


def test_add_local_follows_rotation(key: ec.EllipticCurvePrivateKey) -> None:
    """add_local asks the provider on every verification, so rotated keys apply at once."""
    current: dict[str, Any] = {"k1": key}
    bundles = TrustBundles()
    bundles.add_local("example.org", lambda: current)
    v = SvidVerifier(bundles, AUD, 30)
    assert v.verify(svid(key), now=NOW).spiffe_id == AGENT
    new = ec.generate_private_key(ec.SECP256R1())
    current.clear()
    current["k2"] = new
    assert code_of(v, svid(key)) == "unknown_kid"
    assert v.verify(svid(new, kid="k2"), now=NOW).spiffe_id == AGENT


def test_verifier_refuses_bad_settings(key: ec.EllipticCurvePrivateKey) -> None:
    """An empty audience or a leeway outside 0-300 s is a construction error."""
    with pytest.raises(ValueError):
        SvidVerifier(TrustBundles(), "", 30)
    with pytest.raises(ValueError):
        SvidVerifier(TrustBundles(), AUD, 3600)


def test_duplicate_domain_refused(key: ec.EllipticCurvePrivateKey) -> None:
    """A trust domain can have one bundle only; an invalid domain name is refused."""
    bundles = TrustBundles()
    bundles.add_local("example.org", dict)
    with pytest.raises(ConfigError):
        bundles.add_local("example.org", dict)
    with pytest.raises(ConfigError):
        bundles.add_local("Example.org", dict)


# --- bundles from files --------------------------------------------------------------


def _write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_from_settings_loads_relative_jwks_file(
    tmp_path: Path,
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """Relative jwks_file paths resolve against base_dir; x509-svid entries are skipped."""
    doc = {
        "keys": [
            {"use": "x509-svid", "kty": "EC", "x5c": ["MIIB"]},
            {**public_jwk(key.public_key(), "k1"), "use": "jwt-svid"},
        ],
        "spiffe_sequence": 1,
    }
    _write(tmp_path / "example.json", doc)
    bundles = TrustBundles.from_settings(
        [TrustBundle(trust_domain="example.org", jwks_file="example.json")], tmp_path
    )
    assert bundles.trust_domains == {"example.org"}
    assert SvidVerifier(bundles, AUD, 30).verify(svid(key), now=NOW).spiffe_id == AGENT


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        {"keys": "nope"},
        {"keys": [{"kty": "EC", "crv": "P-256"}]},
        {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "r"}]},
        "private",
        "duplicate",
    ],
)
def test_bad_jwks_file_stops_startup(
    tmp_path: Path,
    key: ec.EllipticCurvePrivateKey,
    doc: Any,
) -> None:
    """Unreadable, malformed, private or ambiguous bundles are a ConfigError at startup."""
    jwk = public_jwk(key.public_key(), "k1")
    if doc == "private":
        doc = {"keys": [{**jwk, "d": "AAAA"}]}
    elif doc == "duplicate":
        doc = {"keys": [jwk, public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), "k1")]}
    path = tmp_path / "b.json"
    if isinstance(doc, str):
        path.write_text(doc)
    else:
        _write(path, doc)
    with pytest.raises(ConfigError):
        TrustBundles.from_settings([TrustBundle(trust_domain="example.org", jwks_file=str(path))], tmp_path)


def test_missing_jwks_file_stops_startup(tmp_path: Path) -> None:
    """A jwks_file that does not exist is a ConfigError."""
    with pytest.raises(ConfigError):
        TrustBundles.from_settings(
            [TrustBundle(trust_domain="example.org", jwks_file="absent.json")], tmp_path
        )


# --- bundles from URLs ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def url_bundles(handler: Any, clock: FakeClock) -> TrustBundles:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    bundles = TrustBundles(
        http_client=client, cache_seconds=300, retry_seconds=30, max_stale_seconds=3600, clock=clock
    )
    bundles.add_jwks_url("example.org", "https://spire.example.org/bundle")
    return bundles


def test_jwks_url_fetched_lazily_and_cached(key: ec.EllipticCurvePrivateKey) -> None:
    """The bundle URL is fetched on first use, then served from cache until it expires."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, json={"keys": [public_jwk(key.public_key(), "k1")]})

    clock = FakeClock()
    v = SvidVerifier(url_bundles(handler, clock), AUD, 30)
    assert calls == []
    for _ in range(3):
        v.verify(svid(key), now=NOW)
    assert calls == ["https://spire.example.org/bundle"]
    clock.t += 301
    v.verify(svid(key), now=NOW)
    assert len(calls) == 2


def test_jwks_url_outage_serves_last_good_then_fails_closed(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """During an outage the last good bundle is used until max_stale, then bundle_unavailable."""
    up = {"ok": True}
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if not up["ok"]:
            return httpx.Response(503)
        return httpx.Response(200, json={"keys": [public_jwk(key.public_key(), "k1")]})

    clock = FakeClock()
    v = SvidVerifier(url_bundles(handler, clock), AUD, 30)
    v.verify(svid(key), now=NOW)
    up["ok"] = False
    clock.t += 301
    v.verify(svid(key), now=NOW)  # refresh fails; last good copy still verifies
    v.verify(svid(key), now=NOW)  # and no new fetch inside retry_seconds
    assert len(calls) == 2
    clock.t += 3600
    with pytest.raises(Unavailable) as info:
        v.verify(svid(key), now=NOW)
    assert info.value.code == "bundle_unavailable"


def test_jwks_url_never_fetched_fails_closed(key: ec.EllipticCurvePrivateKey) -> None:
    """With no bundle ever fetched, verification is bundle_unavailable, never allowed."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    v = SvidVerifier(url_bundles(handler, FakeClock()), AUD, 30)
    with pytest.raises(Unavailable) as info:
        v.verify(svid(key), now=NOW)
    assert info.value.code == "bundle_unavailable"


def test_jwks_url_redirect_not_followed(key: ec.EllipticCurvePrivateKey) -> None:
    """A redirect from the bundle endpoint is not followed (no fetch of other hosts)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(302, headers={"location": "https://evil.example/jwks"})

    v = SvidVerifier(url_bundles(handler, FakeClock()), AUD, 30)
    with pytest.raises(Unavailable):
        v.verify(svid(key), now=NOW)
    assert seen == ["spire.example.org"]


@pytest.mark.parametrize(
    "url", ["http://spire.example.org/bundle", "file:///etc/jwks.json", "ftp://spire.example.org/b"]
)
def test_jwks_url_must_be_https(url: str) -> None:
    """Plain HTTP (except loopback) and other schemes are refused at configuration."""
    with pytest.raises(ConfigError):
        TrustBundles.from_settings([TrustBundle(trust_domain="example.org", jwks_url=url)], Path("."))

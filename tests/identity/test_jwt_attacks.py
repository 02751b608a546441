"""Security regressions for JWT/JWT-SVID verification, one test per attack, named after it.

Tokens are forged by hand (not with a JWT library) so each test controls every byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import tether.identity.jwt as jwt_mod
from tether.errors import Unauthenticated
from tether.identity import SvidVerifier, TrustBundles, public_jwk, verify_jwt

NOW = 1_700_000_000
AUD = "spiffe://tether.local/tether"
ISS = "https://issuer.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def enc(part: dict[str, Any] | str) -> str:
    return b64((part if isinstance(part, str) else json.dumps(part)).encode())


def es256(
    key: ec.EllipticCurvePrivateKey, header: dict[str, Any] | str, payload: dict[str, Any] | str
) -> str:
    """Sign arbitrary header/payload text with ES256, so header checks meet a valid sig."""
    h, p = enc(header), enc(payload)
    r, s = decode_dss_signature(key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"{h}.{p}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def hdr(**over: Any) -> dict[str, Any]:
    return {k: v for k, v in {"alg": "ES256", "kid": "k1", "typ": "JWT", **over}.items() if v is not None}


def claims(**over: Any) -> dict[str, Any]:
    base = {"iss": ISS, "aud": AUD, "sub": "agent", "exp": NOW + 60, "iat": NOW, **over}
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def attacker() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def code_of(token: str, key: ec.EllipticCurvePrivateKey, **over: Any) -> str:
    kwargs: dict[str, Any] = {
        "key_for": lambda h, c: key.public_key() if h.get("kid") == "k1" else None,
        "algorithms": ["ES256"],
        "audience": AUD,
        "issuer": ISS,
        "typ": ["JWT"],
        "leeway": 30,
        "now": NOW,
    }
    kwargs.update(over)
    with pytest.raises(Unauthenticated) as info:
        verify_jwt(token, **kwargs)
    return info.value.code


def test_control_valid_forged_token_verifies(key: ec.EllipticCurvePrivateKey) -> None:
    """The hand-forging helpers make tokens that verify, so every rejection below is real."""
    token = es256(key, hdr(), claims())
    assert (
        verify_jwt(
            token,
            key_for=lambda h, c: key.public_key(),
            algorithms=["ES256"],
            audience=AUD,
            issuer=ISS,
            typ=["JWT"],
            leeway=30,
            now=NOW,
        )["sub"]
        == "agent"
    )


# --- algorithm confusion -------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("sig", ["", "AAAA"])
def test_alg_none_any_casing(key: ec.EllipticCurvePrivateKey, alg: str, sig: str) -> None:
    """alg none, in any casing and with or without a signature, is alg_not_allowed."""
    token = f"{enc(hdr(alg=alg))}.{enc(claims())}.{sig}"
    assert code_of(token, key) == "alg_not_allowed"


def test_alg_case_variant_of_allowed_alg(key: ec.EllipticCurvePrivateKey) -> None:
    """`es256` is not `ES256`: the allowlist is case-sensitive."""
    assert code_of(es256(key, hdr(alg="es256"), claims()), key) == "alg_not_allowed"


@pytest.mark.parametrize("secret_form", ["pem", "jwk_json"])
def test_hs256_signed_with_public_key(key: ec.EllipticCurvePrivateKey, secret_form: str) -> None:
    """HS256 with the verifier's public key (PEM or JWK JSON) as HMAC secret is refused."""
    pub = key.public_key()
    secret = (
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if secret_form == "pem"
        else json.dumps(public_jwk(pub, "k1")).encode()
    )
    h, p = enc(hdr(alg="HS256")), enc(claims())
    mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    token = f"{h}.{p}.{b64(mac)}"
    assert code_of(token, key) == "alg_not_allowed"
    # Even a caller who lists HS256 cannot enable it: verifiers hold public keys only.
    with pytest.raises(ValueError):
        code_of(token, key, algorithms=["ES256", "HS256"])


# --- key material from headers -------------------------------------------------------


class _Counter(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []  # noqa: RUF012 - shared on purpose: the server makes instances

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def attacker_server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_Counter,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"])
def test_key_headers_point_at_attacker_key(
    key: ec.EllipticCurvePrivateKey,
    attacker: ec.EllipticCurvePrivateKey,
    attacker_server: tuple[str, list[str]],
    name: str,
) -> None:
    """jwk/jku/x5u/x5c/x5t headers are refused and nothing is ever fetched."""
    url, hits = attacker_server
    value: Any = {
        "jwk": public_jwk(attacker.public_key(), "k1"),
        "jku": f"{url}/jwks.json",
        "x5u": f"{url}/cert.pem",
        "x5c": [b64(b"not-a-cert")],
        "x5t": b64(b"x" * 20),
        "x5t#S256": b64(b"x" * 32),
    }[name]
    token = es256(attacker, hdr(**{name: value}), claims())
    # The lookup would even find the attacker key: the header check must come first.
    assert code_of(token, key, key_for=lambda h, c: attacker.public_key()) == "header_key_rejected"
    assert hits == []


def test_jku_header_on_svid_fetches_nothing(
    attacker: ec.EllipticCurvePrivateKey,
    attacker_server: tuple[str, list[str]],
) -> None:
    """A JWT-SVID with a jku header is refused by SvidVerifier with zero requests made."""
    url, hits = attacker_server
    bundles = TrustBundles()
    bundles.add_local("tether.local", dict)
    token = es256(attacker, hdr(jku=f"{url}/jwks"), claims(sub="spiffe://tether.local/a"))
    with pytest.raises(Unauthenticated) as info:
        SvidVerifier(bundles, AUD, 30).verify(token, now=NOW)
    assert info.value.code == "header_key_rejected"
    assert hits == []


# --- kid injection -------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["../../../../etc/passwd", "k1' OR '1'='1", 'k1"; --', "k1/../k1"])
def test_kid_path_traversal_and_sql_metacharacters(
    key: ec.EllipticCurvePrivateKey,
    kid: str,
) -> None:
    """Hostile kids reach key lookup verbatim as opaque strings and match nothing."""
    bundles = TrustBundles()
    bundles.add_local("tether.local", lambda: {"k1": key.public_key()})
    token = es256(key, hdr(kid=kid), claims(sub="spiffe://tether.local/a"))
    with pytest.raises(Unauthenticated) as info:
        SvidVerifier(bundles, AUD, 30).verify(token, now=NOW)
    assert info.value.code == "unknown_kid"


@pytest.mark.parametrize("kid", ["k" * 10 * 1024, "k1\n", "k1\x00", "", 1, ["k1"], None])
def test_kid_oversized_control_chars_or_not_string(
    key: ec.EllipticCurvePrivateKey,
    kid: Any,
) -> None:
    """A 10 KB kid, control characters, empty, null or non-string kid is token_malformed."""
    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    token = es256(key, header, claims())
    assert code_of(token, key, max_bytes=64 * 1024) == "token_malformed"


# --- extensions ----------------------------------------------------------------------


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["http://example.com/ext"], [], "x"])
def test_unknown_crit(key: ec.EllipticCurvePrivateKey, crit: Any) -> None:
    """Any crit header, including an empty list, is crit_unsupported."""
    token = es256(key, hdr(crit=crit, **{"http://example.com/ext": True}), claims())
    assert code_of(token, key) == "crit_unsupported"


def test_b64_false_unencoded_payload(key: ec.EllipticCurvePrivateKey) -> None:
    """b64:false (RFC 7797), with or without crit, is refused."""
    assert code_of(es256(key, hdr(b64=False), claims()), key) == "header_unsupported"
    assert code_of(es256(key, hdr(b64=False, crit=["b64"]), claims()), key) == "crit_unsupported"


# --- audience and issuer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("aud", "code"),
    [
        (None, "bad_audience"),
        ("spiffe://evil.example/tether", "bad_audience"),
        (AUD + "/extra", "bad_audience"),
        (AUD.upper(), "bad_audience"),
        (["spiffe://a/x", "spiffe://b/y"], "bad_audience"),
        ([], "claim_invalid"),
        ([AUD, 7], "claim_invalid"),
        ({"aud": AUD}, "claim_invalid"),
        ([[AUD]], "claim_invalid"),
    ],
)
def test_missing_foreign_or_mistyped_audience(
    key: ec.EllipticCurvePrivateKey,
    aud: Any,
    code: str,
) -> None:
    """aud must be a string or list of strings containing the exact expected audience."""
    assert code_of(es256(key, hdr(), claims(aud=aud)), key) == code


def test_explicit_null_audience(key: ec.EllipticCurvePrivateKey) -> None:
    """`aud: null` is not an absent claim: it is claim_invalid."""
    token = es256(key, hdr(), json.dumps({**claims(), "aud": None}))
    assert code_of(token, key) == "claim_invalid"


@pytest.mark.parametrize(
    ("iss", "code"),
    [
        (None, "bad_issuer"),
        (ISS + "/", "bad_issuer"),
        (ISS + ".evil.com", "bad_issuer"),
        (ISS[:-1], "bad_issuer"),
        ("https://evil.com/" + ISS, "bad_issuer"),
        (ISS.upper(), "bad_issuer"),
        (" " + ISS, "bad_issuer"),
        ([ISS], "claim_invalid"),
    ],
)
def test_issuer_prefix_suffix_tricks(key: ec.EllipticCurvePrivateKey, iss: Any, code: str) -> None:
    """iss is compared exactly: prefixes, suffixes, case and lists are refused."""
    assert code_of(es256(key, hdr(), claims(iss=iss)), key) == code


# --- time claims ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"exp": NOW - 30}, "token_expired"),  # now == exp + leeway: expired
        ({"nbf": NOW + 31}, "token_not_yet_valid"),
        ({"iat": NOW + 31}, "token_not_yet_valid"),
        ({"exp": str(NOW + 60)}, "claim_invalid"),
        ({"exp": True}, "claim_invalid"),
        ({"exp": None}, "claim_invalid"),  # missing
        ({"exp": [NOW + 60]}, "claim_invalid"),
        ({"nbf": str(NOW)}, "claim_invalid"),
        ({"iat": {"t": NOW}}, "claim_invalid"),
    ],
)
def test_time_claims_at_edges_and_mistyped(
    key: ec.EllipticCurvePrivateKey,
    over: dict[str, Any],
    code: str,
) -> None:
    """exp/nbf/iat beyond the leeway, as strings, bools or missing exp are refused."""
    assert code_of(es256(key, hdr(), claims(**over)), key) == code


@pytest.mark.parametrize("over", [{"exp": NOW - 29}, {"nbf": NOW + 30}, {"iat": NOW + 30}])
def test_time_claims_just_inside_leeway(key: ec.EllipticCurvePrivateKey, over: dict[str, Any]) -> None:
    """One second inside the leeway still verifies."""
    claims_ = verify_jwt(
        es256(key, hdr(), claims(**over)),
        key_for=lambda h, c: key.public_key(),
        algorithms=["ES256"],
        audience=AUD,
        issuer=ISS,
        typ=["JWT"],
        leeway=30,
        now=NOW,
    )
    assert claims_["sub"] == "agent"


@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
def test_exp_overflowing_to_infinity(key: ec.EllipticCurvePrivateKey, literal: str) -> None:
    """exp 1e400 parses to inf, which must not mean "never expires": claim_invalid."""
    payload = json.dumps(claims(exp=0)).replace('"exp": 0', f'"exp": {literal}')
    assert code_of(es256(key, hdr(), payload), key) == "claim_invalid"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_exp_nan_or_infinity_literal(key: ec.EllipticCurvePrivateKey, literal: str) -> None:
    """NaN/Infinity are not JSON (RFC 8259): refused by the parser as token_malformed."""
    payload = json.dumps(claims(exp=0)).replace('"exp": 0', f'"exp": {literal}')
    assert code_of(es256(key, hdr(), payload), key) == "token_malformed"


# --- size and parsing ----------------------------------------------------------------


def test_oversized_token_rejected_before_parsing(
    key: ec.EllipticCurvePrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token over 16 KB is token_too_large with no base64 or JSON decoding done."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed an oversized token")

    big = es256(key, hdr(), claims(pad="x" * 16 * 1024))
    monkeypatch.setattr(jwt_mod.json, "loads", boom)
    monkeypatch.setattr(jwt_mod, "b64url_decode", boom)
    assert code_of(big, key) == "token_too_large"
    assert code_of("a" * (16 * 1024 + 1), key) == "token_too_large"


def test_multibyte_token_cannot_slip_under_limit(key: ec.EllipticCurvePrivateKey) -> None:
    """Non-ASCII characters are refused, so byte and character counts always agree."""
    assert code_of("é" * 100 + "." + "a" * 8 + ".a", key) == "token_malformed"


@pytest.mark.parametrize("where", ["header", "payload"])
def test_duplicate_json_keys(key: ec.EllipticCurvePrivateKey, where: str) -> None:
    """Duplicate keys in header or payload are token_malformed (no last-one-wins)."""
    if where == "header":
        header = '{"alg":"ES256","kid":"k1","typ":"JWT","alg":"none"}'
        token = es256(key, header, claims())
    else:
        body = json.dumps(claims())[:-1] + ', "aud": "spiffe://evil/x"}'
        token = es256(key, hdr(), body)
    assert code_of(token, key) == "token_malformed"


def test_nested_duplicate_keys(key: ec.EllipticCurvePrivateKey) -> None:
    """Duplicates inside nested objects are caught too."""
    body = json.dumps(claims())[:-1] + ', "act": {"sub": "a", "sub": "b"}}'
    assert code_of(es256(key, hdr(), body), key) == "token_malformed"


def test_deeply_nested_json(key: ec.EllipticCurvePrivateKey) -> None:
    """Deep nesting that would exhaust the parser's recursion is token_malformed."""
    body = '{"x":' + "[" * 5000 + "]" * 5000 + "}"
    assert code_of(f"{enc(hdr())}.{enc(body)}.AAAA", key) == "token_malformed"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t + "=",  # padding
        lambda t: t.replace(".", "..", 1),  # four segments
        lambda t: t.rsplit(".", 1)[0],  # two segments
        lambda t: "." + t.split(".", 1)[1],  # empty header
        lambda t: t.replace("-", "+").replace("_", "/") + "+/",  # standard base64 alphabet
        lambda t: t + " ",
    ],
)
def test_malformed_compact_serialization(key: ec.EllipticCurvePrivateKey, mutate: Any) -> None:
    """Only three canonical, unpadded base64url segments are accepted."""
    assert code_of(mutate(es256(key, hdr(), claims())), key) == "token_malformed"


def test_signature_malleability_via_trailing_bits(key: ec.EllipticCurvePrivateKey) -> None:
    """A non-canonical base64url signature (same bytes, other spelling) is refused."""
    h, p, s = es256(key, hdr(), claims()).split(".")
    # 64 bytes → 86 chars; the last char carries 2 unused bits. Flip one.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = s[:-1] + alphabet[alphabet.index(s[-1]) ^ 1]
    assert code_of(f"{h}.{p}.{twin}", key) == "token_malformed"


def test_header_or_payload_not_an_object(key: ec.EllipticCurvePrivateKey) -> None:
    """A JSON array or string as header or payload is token_malformed."""
    assert code_of(es256(key, '["ES256"]', claims()), key) == "token_malformed"
    assert code_of(es256(key, hdr(), '"claims"'), key) == "token_malformed"


# --- JWT-SVID trust domains ----------------------------------------------------------


def _svid_verifier(key: ec.EllipticCurvePrivateKey, other: ec.EllipticCurvePrivateKey) -> Any:
    bundles = TrustBundles()
    bundles.add_local("a.example", lambda: {"a1": key.public_key()})
    bundles.add_local("b.example", lambda: {"b1": other.public_key()})
    return SvidVerifier(bundles, AUD, 30)


def test_valid_svid_from_untrusted_domain(
    key: ec.EllipticCurvePrivateKey,
    attacker: ec.EllipticCurvePrivateKey,
) -> None:
    """A well-signed SVID whose sub is in an unconfigured domain is untrusted_domain."""
    token = es256(attacker, hdr(kid="a1"), claims(sub="spiffe://evil.example/agent"))
    with pytest.raises(Unauthenticated) as info:
        _svid_verifier(key, attacker).verify(token, now=NOW)
    assert info.value.code == "untrusted_domain"


def test_key_from_domain_a_cannot_sign_for_domain_b(
    key: ec.EllipticCurvePrivateKey,
    attacker: ec.EllipticCurvePrivateKey,
) -> None:
    """Domain A's key (and kid) never verifies an SVID whose sub is in domain B."""
    verifier = _svid_verifier(key, attacker)
    assert (
        verifier.verify(es256(key, hdr(kid="a1"), claims(sub="spiffe://a.example/x")), now=NOW).trust_domain
        == "a.example"
    )
    token = es256(key, hdr(kid="a1"), claims(sub="spiffe://b.example/admin"))
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token, now=NOW)
    assert info.value.code == "unknown_kid"


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://a.example/x?admin=1",
        "spiffe://a.example/x#frag",
        "spiffe://a.example:443/x",
        "spiffe://user@a.example/x",
        "spiffe://a.example/" + "x" * 2048,
        "SPIFFE://a.example/x",
        "spiffe://A.example/x",
        "spiffe://a.example/x/../admin",
        "spiffe://a.example/x/",
        "spiffe://a.example",
        "https://a.example/x",
    ],
)
def test_svid_subject_with_query_fragment_port_or_too_long(
    key: ec.EllipticCurvePrivateKey,
    attacker: ec.EllipticCurvePrivateKey,
    sub: str,
) -> None:
    """An SVID whose sub is not a strict workload SPIFFE ID is bad_subject."""
    token = es256(key, hdr(kid="a1"), claims(sub=sub))
    with pytest.raises(Unauthenticated) as info:
        _svid_verifier(key, attacker).verify(token, now=NOW)
    assert info.value.code == "bad_subject"


def test_task_token_replayed_as_svid(
    key: ec.EllipticCurvePrivateKey,
    attacker: ec.EllipticCurvePrivateKey,
) -> None:
    """A token typed for another use (txntoken+jwt) is not accepted as a JWT-SVID."""
    token = es256(key, hdr(kid="a1", typ="txntoken+jwt"), claims(sub="spiffe://a.example/x"))
    with pytest.raises(Unauthenticated) as info:
        _svid_verifier(key, attacker).verify(token, now=NOW)
    assert info.value.code == "bad_typ"


# === the attack suite through the broker API ==========================================
# Every forged credential presented to POST /v1/tasks (a JWT-SVID) or /v1/authorize (a task
# token) must be rejected with a 4xx and a stable code, leave an audited deny, and never 5xx.

from starlette.testclient import TestClient  # noqa: E402

from tether.identity import sign_jwt  # noqa: E402
from tether.runtime import Runtime  # noqa: E402
from tether.testing import TestTrustDomain, capture_events  # noqa: E402

BROKER_AUD = "spiffe://tether.local/tether"
TASK = {
    "intent": "support.triage",
    "scope": [{"action": "read", "resource": "tickets.queue"}],
    "ttl_seconds": 60,
}


def now_claims(**over: Any) -> dict[str, Any]:
    import time

    t = int(time.time())
    base = {"sub": "spiffe://support.example/attacker", "aud": BROKER_AUD, "exp": t + 60, "iat": t, **over}
    return {k: v for k, v in base.items() if v is not None}


def rejected_at_open(client: TestClient, token: str) -> str:
    """POST /v1/tasks with ``token``: a 4xx, an audited deny with the same code; the code."""
    with capture_events() as events:
        r = client.post("/v1/tasks", headers={"Authorization": f"Bearer {token}"}, json=TASK)
    assert 400 <= r.status_code < 500, r.text
    code: str = r.json()["code"]
    assert any(
        e.type == "decision" and e.payload.get("outcome") == "deny" and e.payload.get("code") == code
        for e in events
    ), code
    return code


def svid_hdr(domain: TestTrustDomain, **over: Any) -> dict[str, Any]:
    return hdr(**{"kid": domain.kid, **over})


def test_api_control_forged_svid_opens_task(client: TestClient, domain: TestTrustDomain) -> None:
    """The hand-forged SVID is accepted when nothing is wrong with it, so every refusal below is real."""
    r = client.post(
        "/v1/tasks",
        json=TASK,
        headers={"Authorization": f"Bearer {es256(domain.key, svid_hdr(domain), now_claims())}"},
    )
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_api_alg_none_any_casing(client: TestClient, domain: TestTrustDomain, alg: str) -> None:
    """alg none in any casing, at task open."""
    token = f"{enc(svid_hdr(domain, alg=alg))}.{enc(now_claims())}."
    assert rejected_at_open(client, token) == "alg_not_allowed"


@pytest.mark.parametrize("secret_form", ["pem", "jwk_json"])
def test_api_hs256_signed_with_public_key(
    client: TestClient, domain: TestTrustDomain, secret_form: str
) -> None:
    """HS256 keyed with the trust domain's public key (PEM or JWK JSON)."""
    pub = domain.key.public_key()
    secret = (
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if secret_form == "pem"
        else json.dumps(public_jwk(pub, domain.kid)).encode()
    )
    h, p = enc(svid_hdr(domain, alg="HS256")), enc(now_claims())
    token = f"{h}.{p}.{b64(hmac.new(secret, f'{h}.{p}'.encode(), hashlib.sha256).digest())}"
    assert rejected_at_open(client, token) == "alg_not_allowed"


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c"])
def test_api_key_header_points_at_attacker_key(
    client: TestClient,
    domain: TestTrustDomain,
    attacker: ec.EllipticCurvePrivateKey,
    attacker_server: tuple[str, list[str]],
    name: str,
) -> None:
    """jwk/jku/x5u/x5c naming the attacker's key: refused, and the attacker's server gets no request."""
    url, hits = attacker_server
    value: Any = {
        "jwk": public_jwk(attacker.public_key(), domain.kid),
        "jku": f"{url}/jwks.json",
        "x5u": f"{url}/cert.pem",
        "x5c": [b64(b"not-a-cert")],
    }[name]
    assert (
        rejected_at_open(client, es256(attacker, svid_hdr(domain, **{name: value}), now_claims()))
        == "header_key_rejected"
    )
    assert hits == []


@pytest.mark.parametrize(
    ("kid", "code"),
    [
        ("../../../../etc/passwd", "unknown_kid"),
        ("k1' OR '1'='1", "unknown_kid"),
        ('k1"; --', "unknown_kid"),
        ("k" * 10 * 1024, "token_malformed"),
    ],
)
def test_api_kid_traversal_sql_and_10kb(
    client: TestClient, domain: TestTrustDomain, kid: str, code: str
) -> None:
    """Hostile kids match nothing (or are malformed), at task open."""
    assert rejected_at_open(client, es256(domain.key, svid_hdr(domain, kid=kid), now_claims())) == code


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"crit": ["exp"]}, "crit_unsupported"),
        ({"b64": False}, "header_unsupported"),
    ],
)
def test_api_unknown_crit_and_b64_false(
    client: TestClient, domain: TestTrustDomain, over: dict[str, Any], code: str
) -> None:
    """crit and b64:false headers, at task open."""
    assert rejected_at_open(client, es256(domain.key, svid_hdr(domain, **over), now_claims())) == code


@pytest.mark.parametrize(
    ("aud", "code"),
    [
        (None, "bad_audience"),
        ("spiffe://evil.example/tether", "bad_audience"),
        (BROKER_AUD + "/", "bad_audience"),
        ([[BROKER_AUD]], "claim_invalid"),
        (7, "claim_invalid"),
        ([], "claim_invalid"),
    ],
)
def test_api_missing_foreign_or_misshapen_aud(
    client: TestClient, domain: TestTrustDomain, aud: Any, code: str
) -> None:
    """aud missing, foreign, a near miss, or not a string/list of strings."""
    assert rejected_at_open(client, es256(domain.key, svid_hdr(domain), now_claims(aud=aud))) == code


@pytest.mark.parametrize(
    "iss", [BROKER_AUD + "/", BROKER_AUD + ".evil", "x" + BROKER_AUD, BROKER_AUD[:-1], None]
)
def test_api_issuer_prefix_suffix_tricks(client: TestClient, runtime: Runtime, iss: str | None) -> None:
    """The broker's own SVIDs need the exact `iss`, even when signed with the broker's key."""
    key = runtime.keys.signing_key()
    claims = now_claims(sub="spiffe://tether.local/agents/x", iss=iss)
    assert rejected_at_open(client, sign_jwt(claims, key.private_key, kid=key.kid, typ="JWT")) == "bad_issuer"


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"exp": -35}, "token_expired"),
        ({"nbf": 35}, "token_not_yet_valid"),
        ({"iat": 35}, "token_not_yet_valid"),
        ({"exp": "9999999999"}, "claim_invalid"),
        ({"exp": 1e400}, "claim_invalid"),
    ],
)
def test_api_exp_nbf_edges_strings_and_overflow(
    client: TestClient, domain: TestTrustDomain, over: dict[str, Any], code: str
) -> None:
    """Times just past the 30 s leeway, as strings, and 1e400 (parses to inf)."""
    import time

    t = int(time.time())
    claims = now_claims(**{k: (t + v if isinstance(v, int) else v) for k, v in over.items()})
    payload = json.dumps(claims).replace('"exp": Infinity', '"exp": 1e400')
    assert rejected_at_open(client, es256(domain.key, svid_hdr(domain), payload)) == code


def test_api_exp_inside_leeway_is_accepted(client: TestClient, domain: TestTrustDomain) -> None:
    """Control for the edge: expired 20 s ago, inside the 30 s leeway, still opens a task."""
    import time

    token = es256(domain.key, svid_hdr(domain), now_claims(exp=int(time.time()) - 20))
    r = client.post("/v1/tasks", json=TASK, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201


def test_api_exp_nan(client: TestClient, domain: TestTrustDomain) -> None:
    """exp: NaN is not JSON: token_malformed."""
    payload = json.dumps(now_claims()).replace('"exp": ', '"exp": NaN, "x": ')
    assert rejected_at_open(client, es256(domain.key, svid_hdr(domain), payload)) == "token_malformed"


@pytest.mark.parametrize("where", ["header", "payload"])
def test_api_duplicate_json_keys(client: TestClient, domain: TestTrustDomain, where: str) -> None:
    """A duplicate key in header or payload: token_malformed (parsers disagree on the winner)."""
    h, p = json.dumps(svid_hdr(domain)), json.dumps(now_claims())
    if where == "header":
        h = h[:-1] + ', "alg": "none"}'
    else:
        p = p[:-1] + ', "sub": "spiffe://support.example/admin"}'
    assert rejected_at_open(client, es256(domain.key, h, p)) == "token_malformed"


def test_api_oversized_token_never_parsed(client: TestClient, domain: TestTrustDomain) -> None:
    """A token over 16 KB is refused before parsing with a 4xx (the header limit), never a 5xx."""
    token = es256(domain.key, svid_hdr(domain), now_claims(pad="A" * 17 * 1024))
    r = client.post("/v1/tasks", headers={"Authorization": f"Bearer {token}"}, json=TASK)
    assert 400 <= r.status_code < 500


def test_api_token_over_token_limit_is_audited(
    tmp_path: Any, sqlite_url: str, domain: TestTrustDomain
) -> None:
    """Under the header limit but over limits.max_token_bytes: token_too_large, audited."""
    from tether.server.app import create_app
    from tether.testing import make_settings

    s = make_settings(
        tmp_path / "st",
        store_url=sqlite_url,
        domain=domain,
        overrides={"limits": {"max_token_bytes": 4096}, "identity": {"workload_socket": ""}},
    )
    rt = Runtime.start(s)
    try:
        with TestClient(create_app(rt), raise_server_exceptions=False) as c:
            token = es256(domain.key, svid_hdr(domain), now_claims(pad="A" * 5000))
            assert rejected_at_open(c, token) == "token_too_large"
    finally:
        rt.close()


def test_api_valid_svid_from_untrusted_trust_domain(client: TestClient) -> None:
    """A correctly signed SVID of a trust domain nobody configured: untrusted_domain."""
    evil = TestTrustDomain("evil.example")
    assert rejected_at_open(client, evil.svid("agent", BROKER_AUD)) == "untrusted_domain"


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://support.example/a?admin=1",
        "spiffe://support.example/a#frag",
        "spiffe://support.example:443/a",
        "spiffe://support.example/" + "a" * 2100,
        "spiffe://support.example",
        "SPIFFE://support.example/a",
    ],
)
def test_api_svid_with_malformed_spiffe_id(client: TestClient, domain: TestTrustDomain, sub: str) -> None:
    """sub with a query, fragment, port, over 2048 bytes, bare domain or wrong case: bad_subject."""
    assert rejected_at_open(client, es256(domain.key, svid_hdr(domain), now_claims(sub=sub))) == "bad_subject"


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_api_forged_task_token_at_authorize(client: TestClient, runtime: Runtime, alg: str) -> None:
    """A task token with alg none / HS256 (keyed with the broker's public JWK) at /v1/authorize."""
    import time

    kid = runtime.keys.signing_key().kid
    header = {"alg": alg, "kid": kid, "typ": "txntoken+jwt"}
    claims = {
        "iss": BROKER_AUD,
        "aud": BROKER_AUD,
        "sub": "spiffe://support.example/a",
        "txn": "tsk_x",
        "exp": int(time.time()) + 60,
    }
    h, p = enc(header), enc(claims)
    secret = json.dumps(runtime.keys.jwks()["keys"][0]).encode()
    sig = "" if alg == "none" else b64(hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest())
    with capture_events() as events:
        r = client.post(
            "/v1/authorize",
            headers={"Authorization": f"Bearer {h}.{p}.{sig}"},
            json={"action": "read", "resource": "tickets.queue"},
        )
    assert (r.status_code, r.json()["code"]) == (401, "alg_not_allowed")
    assert any(e.type == "decision" and e.payload.get("code") == "alg_not_allowed" for e in events)

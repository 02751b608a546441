"""Functional behaviour of the strict JWT verifier, signer and JWK helpers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tether.errors import InvalidRequest, Unauthenticated
from tether.identity import (
    ANY,
    jwk_thumbprint,
    load_jwk,
    public_jwk,
    sign_jwt,
    verify_jwt,
)

NOW = 1_700_000_000
AUD = "spiffe://tether.local/tether"
ISS = "https://issuer.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "agent", "exp": NOW + 60, "iat": NOW}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def verify(token: str, key: Any, **over: Any) -> dict[str, Any]:
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
    return verify_jwt(token, **kwargs)


def code_of(token: str, key: Any, **over: Any) -> str:
    with pytest.raises(Unauthenticated) as info:
        verify(token, key, **over)
    return info.value.code


@pytest.mark.parametrize(
    ("alg", "make"),
    [
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("ES384", lambda: ec.generate_private_key(ec.SECP384R1())),
        ("ES512", lambda: ec.generate_private_key(ec.SECP521R1())),
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("PS384", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ],
)
def test_sign_then_verify_round_trips_each_family(alg: str, make: Any) -> None:
    """A token signed by sign_jwt verifies with the matching public key and allowlist."""
    key = make()
    token = sign_jwt(claims(), key, kid="k1", typ="JWT", alg=alg)
    assert verify(token, key, algorithms=[alg]) == claims()


def test_tampered_payload_fails_signature(p256: ec.EllipticCurvePrivateKey) -> None:
    """Changing one claim after signing gives bad_signature."""
    h, _, s = sign_jwt(claims(), p256, kid="k1", typ="JWT").split(".")
    forged = f"{h}.{b64(json.dumps(claims(sub='admin')).encode())}.{s}"
    assert code_of(forged, p256) == "bad_signature"


def test_signature_from_other_key_fails(p256: ec.EllipticCurvePrivateKey) -> None:
    """A token signed by a different key with the same kid gives bad_signature."""
    other = ec.generate_private_key(ec.SECP256R1())
    assert code_of(sign_jwt(claims(), other, kid="k1", typ="JWT"), p256) == "bad_signature"


def test_der_encoded_ecdsa_signature_rejected(p256: ec.EllipticCurvePrivateKey) -> None:
    """ECDSA signatures must be raw R||S; a DER signature is bad_signature."""
    h, p, _ = sign_jwt(claims(), p256, kid="k1", typ="JWT").split(".")
    der = p256.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    assert code_of(f"{h}.{p}.{b64(der)}", p256) == "bad_signature"


def test_key_of_wrong_type_for_alg(rsa2048: rsa.RSAPrivateKey, p256: ec.EllipticCurvePrivateKey) -> None:
    """An RSA key returned for an ES256 token gives bad_signature, not a crash."""
    token = sign_jwt(claims(), p256, kid="k1", typ="JWT")
    assert code_of(token, rsa2048) == "bad_signature"


def test_ec_curve_must_match_alg(p256: ec.EllipticCurvePrivateKey) -> None:
    """ES384 requires P-384: a P-256 key for an ES384 token is refused."""
    p384 = ec.generate_private_key(ec.SECP384R1())
    token = sign_jwt(claims(), p384, kid="k1", typ="JWT", alg="ES384")
    assert code_of(token, p256, algorithms=["ES384"]) == "bad_signature"


def test_short_rsa_key_refused() -> None:
    """RSA keys under 2048 bits never verify (RFC 7518 section 3.3)."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError):
        sign_jwt(claims(), weak, kid="k1", typ="JWT", alg="RS256")
    h = b64(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}).encode())
    p = b64(json.dumps(claims()).encode())
    sig = weak.sign(f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert code_of(f"{h}.{p}.{b64(sig)}", weak, algorithms=["RS256"]) == "bad_signature"


def test_unknown_and_missing_kid(p256: ec.EllipticCurvePrivateKey) -> None:
    """No key for the kid, or no kid at all, gives unknown_kid."""
    assert code_of(sign_jwt(claims(), p256, kid="k2", typ="JWT"), p256) == "unknown_kid"
    h = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    p = b64(json.dumps(claims()).encode())
    assert code_of(f"{h}.{p}.AAAA", p256) == "unknown_kid"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "Application/JWT"])
def test_typ_compares_case_insensitively_with_optional_prefix(
    p256: ec.EllipticCurvePrivateKey, typ: str
) -> None:
    """typ matches case-insensitively, with or without `application/` (RFC 7515 4.1.9)."""
    assert verify(sign_jwt(claims(), p256, kid="k1", typ=typ), p256)["sub"] == "agent"


def test_typ_mismatch_and_absence(p256: ec.EllipticCurvePrivateKey) -> None:
    """A wrong typ is bad_typ; a missing typ is bad_typ unless require_typ=False."""
    wrong = sign_jwt(claims(), p256, kid="k1", typ="txntoken+jwt")
    assert code_of(wrong, p256) == "bad_typ"
    h = b64(json.dumps({"alg": "ES256", "kid": "k1"}).encode())
    p = b64(json.dumps(claims()).encode())
    sig = p256.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(sig)
    token = f"{h}.{p}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    assert code_of(token, p256) == "bad_typ"
    assert verify(token, p256, require_typ=False)["sub"] == "agent"
    assert verify(token, p256, typ=None)["sub"] == "agent"


def test_audience_in_list(p256: ec.EllipticCurvePrivateKey) -> None:
    """aud may be a list; it is enough that it contains the expected audience."""
    token = sign_jwt(claims(aud=["other", AUD]), p256, kid="k1", typ="JWT")
    assert verify(token, p256)["aud"] == ["other", AUD]


def test_any_opts_out_of_audience_and_issuer(p256: ec.EllipticCurvePrivateKey) -> None:
    """ANY accepts any aud and iss, but only when the caller says so explicitly."""
    token = sign_jwt(claims(aud="x", iss="y"), p256, kid="k1", typ="JWT")
    assert verify(token, p256, audience=ANY, issuer=ANY)["iss"] == "y"


def test_exp_required_even_when_not_listed(p256: ec.EllipticCurvePrivateKey) -> None:
    """exp is always required: required=() does not turn the check off."""
    token = sign_jwt(claims(exp=None), p256, kid="k1", typ="JWT")
    assert code_of(token, p256, required=()) == "claim_invalid"


def test_extra_required_claim(p256: ec.EllipticCurvePrivateKey) -> None:
    """A claim named in required but absent gives claim_invalid."""
    token = sign_jwt(claims(), p256, kid="k1", typ="JWT")
    assert code_of(token, p256, required=("exp", "jti")) == "claim_invalid"


def test_sub_must_be_string(p256: ec.EllipticCurvePrivateKey) -> None:
    """A non-string sub is claim_invalid."""
    token = sign_jwt(claims(sub=["a", "b"]), p256, kid="k1", typ="JWT")
    assert code_of(token, p256) == "claim_invalid"


@pytest.mark.parametrize("algs", [[], ["HS256"], ["none"], ["ES256", "EdDSA"]])
def test_allowlist_must_be_supported_asymmetric(p256: ec.EllipticCurvePrivateKey, algs: list[str]) -> None:
    """An empty allowlist or one naming HS*, none or unsupported algs is a caller bug."""
    token = sign_jwt(claims(), p256, kid="k1", typ="JWT")
    with pytest.raises(ValueError):
        verify(token, p256, algorithms=algs)


def test_negative_leeway_is_a_caller_bug(p256: ec.EllipticCurvePrivateKey) -> None:
    """A negative leeway raises ValueError instead of silently shrinking lifetimes."""
    with pytest.raises(ValueError):
        verify(sign_jwt(claims(), p256, kid="k1", typ="JWT"), p256, leeway=-1)


def test_key_for_receives_read_only_header_and_claims(
    p256: ec.EllipticCurvePrivateKey,
) -> None:
    """key_for sees the header and unverified claims but cannot modify them."""
    seen: list[Any] = []

    def key_for(h: Any, c: Any) -> Any:
        seen.append((h["kid"], c["sub"]))
        with pytest.raises(TypeError):
            c["sub"] = "admin"
        return p256.public_key()

    verify(sign_jwt(claims(), p256, kid="k1", typ="JWT"), p256, key_for=key_for)
    assert seen == [("k1", "agent")]


def test_sign_refuses_non_finite_claims(p256: ec.EllipticCurvePrivateKey) -> None:
    """sign_jwt never emits NaN/Infinity, which our own verifier would refuse."""
    with pytest.raises(ValueError):
        sign_jwt(claims(exp=float("inf")), p256, kid="k1", typ="JWT")


# --- JWK helpers ---------------------------------------------------------------------

RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
    "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
    "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
    "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnq"
    "DKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


def test_thumbprint_matches_rfc7638_example() -> None:
    """jwk_thumbprint reproduces the RFC 7638 section 3.1 example value."""
    assert jwk_thumbprint(RFC7638_JWK) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_ignores_optional_members(p256: ec.EllipticCurvePrivateKey) -> None:
    """kid, use and alg do not change the thumbprint; a missing member is jwk_invalid."""
    jwk = public_jwk(p256.public_key(), "k1")
    bare = {k: jwk[k] for k in ("kty", "crv", "x", "y")}
    assert jwk_thumbprint(jwk) == jwk_thumbprint(bare)
    with pytest.raises(InvalidRequest) as info:
        jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": jwk["x"]})
    assert info.value.code == "jwk_invalid"


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
)
def test_public_jwk_load_jwk_round_trip(make: Any) -> None:
    """public_jwk then load_jwk gives back the same public key."""
    key = make().public_key()
    loaded = load_jwk(public_jwk(key, "k1"))
    assert loaded.public_numbers() == key.public_numbers()


def test_load_jwk_rejects_bad_keys(p256: ec.EllipticCurvePrivateKey) -> None:
    """Private members, off-curve points, short coordinates, weak RSA, enc keys: jwk_invalid."""
    good = public_jwk(p256.public_key(), "k1")
    nums = p256.public_key().public_numbers()
    small_rsa = public_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), "r")
    bad = [
        {**good, "d": "AAAA"},
        {**good, "y": b64((nums.y ^ 1).to_bytes(32, "big"))},
        {**good, "x": good["x"][:-2]},
        {**good, "use": "enc"},
        {**good, "crv": "P-192"},
        small_rsa,
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
    ]
    for jwk in bad:
        with pytest.raises(InvalidRequest) as info:
            load_jwk(jwk)
        assert info.value.code == "jwk_invalid", jwk


def test_bare_string_allowlist_is_a_caller_bug(p256: ec.EllipticCurvePrivateKey) -> None:
    """algorithms="ES256" or typ="JWT" (strings, not collections) raise TypeError."""
    token = sign_jwt(claims(), p256, kid="k1", typ="JWT")
    with pytest.raises(TypeError):
        verify(token, p256, algorithms="ES256")
    with pytest.raises(TypeError):
        verify(token, p256, typ="JWT")


# -- EcSigner: the access-token signer of the jwt connector ---------------------------------
@pytest.mark.parametrize(
    "claims",
    [
        {"iss": ISS, "aud": "tickets", "sub": "spiffe://d/a", "iat": NOW, "exp": NOW + 60, "scope": "read@x"},
        {"iss": ISS, "aud": "tickets", "exp": NOW + 60, "act": {"sub": "b", "act": {"sub": "c"}}},
        {
            "iss": ISS,
            "aud": "tickets",
            "exp": NOW + 60,
            "sub": "agent-\u00e9\u2603",
        },  # non-ASCII: json's escapes
        {"iss": ISS, "aud": "tickets", "exp": NOW + 60, "sub": 'q"uo\\te\n\x7f\x01'},  # escapes
        {"iss": ISS, "aud": "tickets", "exp": NOW + 60, "f": 1e16, "g": 0.1},  # floats: json's spelling
        {"iss": ISS, "aud": "tickets", "exp": NOW + 60, "big": 2**70},  # beyond orjson's integers
    ],
)
def test_ec_signer_writes_the_bytes_of_sign_jwt(
    p256: ec.EllipticCurvePrivateKey, claims: dict[str, Any]
) -> None:
    from tether.identity.jwt import EcSigner

    fast = EcSigner(p256, kid="k1", typ="at+jwt").sign(claims)
    slow = sign_jwt(claims, p256, kid="k1", typ="at+jwt")
    # ECDSA signatures are randomised: the signed part must match, and both must verify.
    assert fast.rsplit(".", 1)[0] == slow.rsplit(".", 1)[0]
    for token in (fast, slow):
        got = verify_jwt(
            token,
            key_for=lambda h, c: p256.public_key(),
            algorithms={"ES256"},
            audience="tickets",
            issuer=ISS,
            typ={"at+jwt"},
            leeway=0,
            now=NOW,
        )
        assert got == claims


def test_ec_signer_refuses_what_sign_jwt_refuses(p256: ec.EllipticCurvePrivateKey) -> None:
    from tether.identity.jwt import EcSigner

    with pytest.raises(ValueError, match="kid"):
        EcSigner(p256, kid="", typ="at+jwt")
    with pytest.raises(ValueError, match="fit"):
        EcSigner(p256, kid="k1", typ="at+jwt", alg="ES384")
    with pytest.raises(ValueError):
        EcSigner(p256, kid="k1", typ="at+jwt").sign({"exp": float("nan")})

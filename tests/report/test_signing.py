"""Detached JWS over a report: what verifies, and the forgeries that must not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tether.errors import Unauthenticated
from tether.identity.jwt import b64url_encode, public_jwk, sign_detached
from tether.report.signing import REPORT_TYP, verify_report

PAYLOAD = json.dumps({"report": "tether-compliance-report", "summary": {"met": 3}}, indent=2).encode()


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return {"k1": public_jwk(key.public_key(), "k1")}


def test_signed_report_verifies(key: ec.EllipticCurvePrivateKey, jwks: dict[str, Any]):
    """A detached signature over the exact bytes verifies and gives the report back."""
    jws = sign_detached(PAYLOAD, key, kid="k1", typ=REPORT_TYP)
    assert jws.split(".")[1] == ""  # the payload is not carried in the signature
    assert verify_report(PAYLOAD, jws, jwks)["summary"] == {"met": 3}


def test_one_changed_byte_fails(key: ec.EllipticCurvePrivateKey, jwks: dict[str, Any]):
    """Editing the report after signing breaks the signature."""
    jws = sign_detached(PAYLOAD, key, kid="k1", typ=REPORT_TYP)
    with pytest.raises(Unauthenticated) as exc:
        verify_report(PAYLOAD.replace(b"3", b"9"), jws, jwks)
    assert exc.value.code == "bad_signature"


def test_signature_by_an_untrusted_key_fails(jwks: dict[str, Any]):
    """A report re-signed by someone else's key under a trusted kid does not verify."""
    other = ec.generate_private_key(ec.SECP256R1())
    jws = sign_detached(PAYLOAD, other, kid="k1", typ=REPORT_TYP)
    with pytest.raises(Unauthenticated, match="signature"):
        verify_report(PAYLOAD, jws, jwks)


def test_unknown_kid_fails(key: ec.EllipticCurvePrivateKey, jwks: dict[str, Any]):
    """A signature naming a key the verifier does not trust is refused."""
    jws = sign_detached(PAYLOAD, key, kid="k2", typ=REPORT_TYP)
    with pytest.raises(Unauthenticated) as exc:
        verify_report(PAYLOAD, jws, jwks)
    assert exc.value.code == "unknown_kid"


def test_checkpoint_typ_moved_onto_a_report_fails(key: ec.EllipticCurvePrivateKey, jwks: dict[str, Any]):
    """A signature of another type (e.g. a checkpoint) is not accepted for a report."""
    jws = sign_detached(PAYLOAD, key, kid="k1", typ="tether-audit-checkpoint+jwt")
    with pytest.raises(Unauthenticated) as exc:
        verify_report(PAYLOAD, jws, jwks)
    assert exc.value.code == "bad_typ"


def test_alg_none_forgery_fails(jwks: dict[str, Any]):
    """An unsigned `alg: none` header never verifies."""
    head = b64url_encode(json.dumps({"alg": "none", "kid": "k1", "typ": REPORT_TYP}).encode())
    with pytest.raises(Unauthenticated) as exc:
        verify_report(PAYLOAD, f"{head}..", jwks)
    assert exc.value.code == "alg_not_allowed"


def test_attached_payload_is_refused(key: ec.EllipticCurvePrivateKey, jwks: dict[str, Any]):
    """A compact JWS that carries its own payload is not a detached report signature."""
    jws = sign_detached(PAYLOAD, key, kid="k1", typ=REPORT_TYP)
    head, _, sig = jws.split(".")
    with pytest.raises(Unauthenticated) as exc:
        verify_report(PAYLOAD, f"{head}.{b64url_encode(PAYLOAD)}.{sig}", jwks)
    assert exc.value.code == "token_malformed"

"""DPoP proofs, client side (RFC 9449): what an agent sends in the ``DPoP`` header.

The client signs with ``cryptography`` alone (it installs without the broker): a compact
JWS with header ``{"typ": "dpop+jwt", "alg", "jwk"}`` — the public key only — and claims
``jti``, ``htm``, ``htu``, ``iat`` and, with a task token, ``ath`` (the token's SHA-256).
The broker verifies these proofs with its one JOSE path (``tether.identity``); the
tests of both sides run proofs made here through that verifier.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["DPOP_TYP", "make_proof", "new_key", "public_jwk", "token_hash"]

DPOP_TYP = "dpop+jwt"
# Curve → (JWK name, JWS alg, hash): the ECDSA algorithms of RFC 7518 section 3.4.
_CURVES: dict[str, tuple[str, str, hashes.HashAlgorithm]] = {
    "secp256r1": ("P-256", "ES256", hashes.SHA256()),
    "secp384r1": ("P-384", "ES384", hashes.SHA384()),
    "secp521r1": ("P-521", "ES512", hashes.SHA512()),
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key, in memory only (one per client)."""
    return ec.generate_private_key(ec.SECP256R1())


def token_hash(token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token (RFC 9449 section 4.2)."""
    return _b64(hashlib.sha256(token.encode("ascii")).digest())


def _curve(key: Any) -> tuple[str, str, hashes.HashAlgorithm]:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _CURVES:
        raise ValueError("a DPoP key must be an EC P-256, P-384 or P-521 private key")
    return _CURVES[key.curve.name]


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public half of ``key`` as a JWK (full-length coordinates, RFC 7518 6.2.1.2)."""
    crv, _alg, _hash = _curve(key)
    size = (key.curve.key_size + 7) // 8
    nums = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": _b64(nums.x.to_bytes(size, "big")),
        "y": _b64(nums.y.to_bytes(size, "big")),
    }


def make_proof(
    private_key: Any,
    method: str,
    url: str,
    *,
    access_token: str | None = None,
    iat: float | None = None,
    jti: str | None = None,
) -> str:
    """A DPoP proof for one request: ``method`` and ``url`` (no query or fragment)."""
    _crv, alg, digest = _curve(private_key)
    claims: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": method,
        "htu": url,
        "iat": int(time.time() if iat is None else iat),
    }
    if access_token is not None:
        claims["ath"] = token_hash(access_token)
    header = {"alg": alg, "typ": DPOP_TYP, "jwk": public_jwk(private_key)}
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":"), allow_nan=False).encode()) for part in (header, claims)
    )
    der = private_key.sign(signing_input.encode("ascii"), ec.ECDSA(digest))
    r, s = decode_dss_signature(der)
    size = (private_key.curve.key_size + 7) // 8
    return signing_input + "." + _b64(r.to_bytes(size, "big") + s.to_bytes(size, "big"))

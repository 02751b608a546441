"""Key encoding for the JOSE layer: strict base64url and JWKs (RFC 7517 / 7518 / 7638).

Split from :mod:`tether.identity.jwt` (verification and signing), which re-exports these
names. Loading is as strict as verification: public keys only, named curves, points checked
on the curve, RSA moduli of at least :data:`MIN_RSA_BITS`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tether.errors import InvalidRequest

MIN_RSA_BITS: Final = 2048  # RFC 7518 section 3.3
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url, refusing any non-canonical spelling.

    Re-encoding and comparing rejects padding, stray characters and non-zero trailing
    bits, so one token has exactly one byte representation (no signature malleability).
    """
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not canonical base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise ValueError("not canonical base64url") from exc
    if b64url_encode(raw) != segment:
        raise ValueError("not canonical base64url")
    return raw


def public_key_of(key: Any) -> Any:
    """The public half of ``key`` (a private key), or ``key`` itself."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key.public_key()
    return key


_JWK_CURVES: Final[dict[str, tuple[ec.EllipticCurve, str]]] = {
    "P-256": (ec.SECP256R1(), "ES256"),
    "P-384": (ec.SECP384R1(), "ES384"),
    "P-521": (ec.SECP521R1(), "ES512"),
}
_CURVE_NAMES: Final = {curve.name: crv for crv, (curve, _) in _JWK_CURVES.items()}
# A trust bundle holding a private key is a leak waiting to be copied around.
PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_THUMBPRINT_MEMBERS: Final = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
    "oct": ("k", "kty"),
}


def _jwk_error(why: str) -> InvalidRequest:
    return InvalidRequest(f"invalid JWK: {why}", code="jwk_invalid")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: required members only, sorted, no spaces."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise _jwk_error(f"unsupported `kty` `{jwk.get('kty')}`")
    if not all(isinstance(jwk.get(m), str) for m in members):
        raise _jwk_error(f"`{jwk['kty']}` key needs string members {', '.join(members)}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical.encode("utf-8"))
    return b64url_encode(digest.finalize())


def _int_bytes(n: int, size: int | None = None) -> str:
    return b64url_encode(n.to_bytes(size or max(1, (n.bit_length() + 7) // 8), "big"))


def public_jwk(public_key: Any, kid: str) -> dict[str, Any]:
    """The public JWK of an EC (P-256/384/521) or RSA key, for a JWKS document."""
    key = public_key_of(public_key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise ValueError(f"unsupported curve {key.curve.name}")
        size = (key.curve.key_size + 7) // 8
        nums = key.public_numbers()
        # Coordinates are full length (RFC 7518 section 6.2.1.2), never trimmed.
        return {
            "kty": "EC",
            "crv": crv,
            "x": _int_bytes(nums.x, size),
            "y": _int_bytes(nums.y, size),
            "kid": kid,
            "use": "sig",
            "alg": _JWK_CURVES[crv][1],
        }
    if isinstance(key, rsa.RSAPublicKey):
        rnums = key.public_numbers()
        return {"kty": "RSA", "n": _int_bytes(rnums.n), "e": _int_bytes(rnums.e), "kid": kid, "use": "sig"}
    raise ValueError("public_key must be an EC or RSA key")


def _b64_member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise _jwk_error(f"`{name}` is required")
    try:
        return b64url_decode(value)
    except ValueError:
        raise _jwk_error(f"`{name}` is not base64url") from None


def load_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """Load an EC or RSA *public* JWK; raise ``InvalidRequest(code="jwk_invalid")``."""
    if not isinstance(jwk, Mapping):
        raise _jwk_error("must be a JSON object")
    for name in PRIVATE_MEMBERS:
        if name in jwk:
            raise _jwk_error(f"contains private key member `{name}`")
    use = jwk.get("use")
    if use is not None and use not in ("sig", "jwt-svid"):
        raise _jwk_error(f"`use` `{use}` is not a signature key")
    kty = jwk.get("kty")
    if kty == "EC":
        crv = jwk.get("crv")
        if crv not in _JWK_CURVES:
            raise _jwk_error(f"unsupported `crv` `{crv}`")
        curve, _ = _JWK_CURVES[crv]
        size = (curve.key_size + 7) // 8
        x, y = _b64_member(jwk, "x"), _b64_member(jwk, "y")
        if len(x) != size or len(y) != size:
            raise _jwk_error(f"`x` and `y` must be {size} bytes for `{crv}`")
        try:
            # public_key() checks that the point is on the curve (invalid-curve attacks).
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError:
            raise _jwk_error("point is not on the curve") from None
    if kty == "RSA":
        n = int.from_bytes(_b64_member(jwk, "n"), "big")
        e = int.from_bytes(_b64_member(jwk, "e"), "big")
        if n.bit_length() < MIN_RSA_BITS:
            raise _jwk_error(f"RSA modulus shorter than {MIN_RSA_BITS} bits")
        if e < 3 or e % 2 == 0:
            raise _jwk_error("RSA exponent must be odd and at least 3")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise _jwk_error("RSA key is invalid") from None
    raise _jwk_error(f"unsupported `kty` `{kty}`")

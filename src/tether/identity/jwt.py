"""Strict JWS compact / JWT verification and signing, secure by default.

Every JWT Tether accepts goes through :func:`verify_jwt`. It is deliberately narrower than
RFC 7515/7519: asymmetric algorithms only, from an explicit allowlist; no key material or
key URLs taken from headers (nothing is ever fetched); no ``crit`` extensions; no
``b64``; strict base64url and strict JSON (duplicate keys, ``NaN`` and bad UTF-8 are
rejected so that no other parser can read a different token than we did). Every failure
is :class:`~tether.errors.Unauthenticated` with one of these codes:

    token_too_large      over ``max_bytes``; checked before anything is parsed
    token_malformed      not three canonical base64url segments, bad JSON, bad ``kid``
    alg_not_allowed      ``alg`` missing or not in the allowlist (``none``, ``HS256``, …)
    header_key_rejected  ``jwk``/``jku``/``x5u``/``x5c``/``x5t`` header present
    crit_unsupported     any ``crit`` header
    header_unsupported   ``b64`` header (RFC 7797 unencoded payloads)
    bad_typ              ``typ`` missing (when required) or not one of the expected types
    unknown_kid          ``key_for`` found no key
    bad_signature        signature invalid, or key type does not fit ``alg``
    claim_invalid        required claim missing or of the wrong type (``exp`` as a string)
    token_expired        ``exp`` passed, beyond the leeway
    token_not_yet_valid  ``nbf`` or ``iat`` in the future, beyond the leeway
    bad_audience         ``aud`` missing or does not contain the expected audience
    bad_issuer           ``iss`` missing or not exactly the expected issuer
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from tether.errors import InvalidRequest, Unauthenticated

# Key encoding (base64url, JWK) lives in tether.identity.jwk; the names below stay
# importable from here, where most callers already look for them.
from tether.identity.jwk import (
    MIN_RSA_BITS,
    PRIVATE_MEMBERS,
    public_key_of,
)
from tether.identity.jwk import b64url_decode as b64url_decode
from tether.identity.jwk import b64url_encode as b64url_encode
from tether.identity.jwk import jwk_thumbprint as jwk_thumbprint
from tether.identity.jwk import load_jwk as load_jwk
from tether.identity.jwk import public_jwk as public_jwk

DEFAULT_MAX_BYTES: Final = 16 * 1024
MAX_KID_CHARS: Final = 128

_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
# ES512 uses P-521 (not P-512); RFC 7518 section 3.4 pins one curve per algorithm.
_EC_CURVES: Final[dict[str, str]] = {
    "ES256": "secp256r1",
    "ES384": "secp384r1",
    "ES512": "secp521r1",
}
#: Every algorithm this module can verify. HS* and ``none`` are absent on purpose:
#: verifiers hold public keys, and an HMAC "keyed" with a public key is a forgery.
SUPPORTED_ALGORITHMS: Final = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
# Headers that carry or point at key material. Trusting them lets the sender pick the key.
_KEY_HEADERS: Final = ("jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256")


class _Any(enum.Enum):
    ANY = "any"


#: Pass as ``audience`` or ``issuer`` to opt out of that check explicitly.
ANY: Final = _Any.ANY
AnyValue = Literal[_Any.ANY]

#: ``key_for(header, claims)`` returns the verification key or ``None``. Both mappings
#: are unverified: use them only to choose a key (``kid``, the trust domain of ``sub``).
KeyLookup = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


def _fail(code: str, message: str, **details: Any) -> Unauthenticated:
    return Unauthenticated(message, code=code, **details)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Parsers disagree on which duplicate wins; refusing is the only safe answer.
            raise ValueError(f"duplicate key `{key}`")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not JSON")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError included
        raise _fail("token_malformed", f"{what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise _fail("token_malformed", f"{what} is not a JSON object")
    return value


def _norm_typ(value: str) -> str:
    # RFC 7515 section 4.1.9: media types compare case-insensitively, and
    # `application/` may be omitted when no other `/` appears.
    value = value.lower()
    if value.startswith("application/") and "/" not in value[len("application/") :]:
        value = value[len("application/") :]
    return value


def _valid_kid(kid: Any) -> bool:
    # Keys are looked up (files, SQL, logs) by kid: keep it short and printable ASCII.
    return isinstance(kid, str) and 0 < len(kid) <= MAX_KID_CHARS and all(0x20 <= ord(c) < 0x7F for c in kid)


def _check_key_fits(alg: str, key: Any) -> None:
    family = alg[:2]
    if family == "ES":
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != _EC_CURVES[alg]:
            raise _fail("bad_signature", f"key does not fit `alg` `{alg}`")
    elif not isinstance(key, rsa.RSAPublicKey):
        raise _fail("bad_signature", f"key does not fit `alg` `{alg}`")
    elif key.key_size < MIN_RSA_BITS:
        raise _fail("bad_signature", f"RSA key shorter than {MIN_RSA_BITS} bits")


def _verify_signature(alg: str, key: Any, signing_input: bytes, signature: bytes) -> None:
    _check_key_fits(alg, key)
    hash_alg = _HASHES[alg[2:]]()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            size = (key.curve.key_size + 7) // 8
            # JWS ECDSA signatures are raw R||S of fixed length (RFC 7518 section 3.4).
            if len(signature) != 2 * size:
                raise InvalidSignature
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hash_alg))
        elif alg.startswith("RS"):
            key.verify(signature, signing_input, padding.PKCS1v15(), hash_alg)
        else:
            pss = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
            key.verify(signature, signing_input, pss, hash_alg)
    except (InvalidSignature, ValueError) as exc:
        raise _fail("bad_signature", "signature does not verify") from exc


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | int | None:
    if name not in claims:
        return None
    value = claims[name]
    # bool is an int subclass; strings and non-finite numbers (1e400 parses to inf)
    # would make every comparison below meaningless.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise _fail("claim_invalid", f"`{name}` must be a finite number", claim=name)
    return value


def check_claims(
    claims: Mapping[str, Any],
    *,
    audience: str | AnyValue,
    issuer: str | AnyValue,
    leeway: int,
    now: float,
    required: Collection[str],
) -> None:
    for name in required:
        if name not in claims:
            raise _fail("claim_invalid", f"claim `{name}` is required", claim=name)
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    iat = _numeric_date(claims, "iat")
    if exp is not None and now >= exp + leeway:
        raise _fail("token_expired", "token has expired")
    if nbf is not None and now + leeway < nbf:
        raise _fail("token_not_yet_valid", "token is not valid yet (`nbf`)")
    if iat is not None and now + leeway < iat:
        raise _fail("token_not_yet_valid", "token was issued in the future (`iat`)")

    if "aud" in claims:
        aud = claims["aud"]
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not auds or not all(isinstance(a, str) for a in auds):
            raise _fail("claim_invalid", "`aud` must be a string or a list of strings", claim="aud")
        if audience is not ANY and audience not in auds:
            raise _fail("bad_audience", f"token is not for audience `{audience}`")
    elif audience is not ANY:
        raise _fail("bad_audience", f"token has no `aud`; expected `{audience}`")

    for name in ("iss", "sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise _fail("claim_invalid", f"`{name}` must be a string", claim=name)
    if issuer is not ANY and claims.get("iss") != issuer:
        # Exact comparison: no prefix, suffix, case or trailing-slash tolerance.
        raise _fail("bad_issuer", f"token is not from issuer `{issuer}`")


def verify_jwt(
    token: str,
    *,
    key_for: KeyLookup,
    algorithms: Collection[str],
    audience: str | AnyValue,
    issuer: str | AnyValue,
    typ: Collection[str] | None,
    leeway: int,
    now: float | None = None,
    require_typ: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    required: Collection[str] = ("exp",),
) -> dict[str, Any]:
    """Verify a compact JWS and its JWT claims; return the claims or raise ``Unauthenticated``.

    There are no permissive defaults: the caller names the algorithms, the audience and
    issuer (a string, or :data:`ANY` to opt out), the accepted ``typ`` values (``None``
    to skip the check) and the leeway. ``exp`` is always required, whatever ``required``
    says: a token without expiry is a long-lived secret. When ``typ`` is given and
    ``require_typ`` is false, a token without a ``typ`` header is accepted.
    """
    if isinstance(algorithms, str) or isinstance(typ, str):
        # A bare string is a Collection[str] of its characters: never what was meant.
        raise TypeError("algorithms and typ must be collections of strings, not a string")
    allowed = frozenset(algorithms)
    if not allowed or not allowed <= SUPPORTED_ALGORITHMS:
        raise ValueError(f"algorithms must be a non-empty subset of {sorted(SUPPORTED_ALGORITHMS)}")
    if leeway < 0:
        raise ValueError("leeway must not be negative")
    claims = _verify_jws(
        token,
        key_for=key_for,
        allowed=allowed,
        typ=typ,
        require_typ=require_typ,
        max_bytes=max_bytes,
        embedded_jwk=False,
    )

    # 6. Claims.
    check_claims(
        claims,
        audience=audience,
        issuer=issuer,
        leeway=leeway,
        now=time.time() if now is None else now,
        required={"exp", *required},
    )
    return claims


def _verify_jws(
    token: str,
    *,
    key_for: KeyLookup,
    allowed: frozenset[str],
    typ: Collection[str] | None,
    require_typ: bool,
    max_bytes: int,
    embedded_jwk: bool,
) -> dict[str, Any]:
    """Steps 1-5 of :func:`verify_jwt`: size, shape, strict JSON, header, signature."""
    # 1. Size before anything else: len(str) <= its UTF-8 length, so this never parses.
    if not isinstance(token, str):
        raise _fail("token_malformed", "token must be a string")
    if len(token) > max_bytes:
        raise _fail("token_too_large", f"token exceeds {max_bytes} bytes", limit=max_bytes)

    # 2. Shape: three canonical base64url segments, ASCII only. An empty signature is
    # let through to the `alg` check so `alg: none` tokens get their own code.
    parts = token.split(".")
    if not token.isascii() or len(parts) != 3 or not parts[0] or not parts[1]:
        raise _fail("token_malformed", "token must be three base64url segments")
    try:
        header_raw, payload_raw, signature = (b64url_decode(p) for p in parts)
    except ValueError as exc:
        raise _fail("token_malformed", "token segments must be unpadded base64url") from exc

    # 3. Strict JSON.
    header = _json_object(header_raw, "header")
    claims = _json_object(payload_raw, "payload")

    # 4. Header checks, before any key is chosen.
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        shown = alg if isinstance(alg, str) and len(alg) <= 32 and _valid_kid(alg) else "?"
        raise _fail("alg_not_allowed", f"`alg` `{shown}` is not allowed")
    for name in _KEY_HEADERS:
        # A DPoP proof carries its own public key in `jwk` (RFC 9449 section 4.2): the
        # only case where the key comes from the token, and the caller then pins its
        # thumbprint. Every other key header stays refused, there too.
        if name in header and not (embedded_jwk and name == "jwk"):
            raise _fail("header_key_rejected", f"`{name}` header is not accepted")
    if "crit" in header:
        raise _fail("crit_unsupported", "`crit` header is not supported")
    if "b64" in header:
        raise _fail("header_unsupported", "`b64` header is not supported")
    if typ is not None:
        got = header.get("typ")
        if got is None and not require_typ and "typ" not in header:
            pass
        elif not isinstance(got, str) or _norm_typ(got) not in {_norm_typ(t) for t in typ}:
            raise _fail("bad_typ", f"`typ` must be one of {', '.join(f'`{t}`' for t in typ)}")
    if "kid" in header and not _valid_kid(header["kid"]):
        raise _fail("token_malformed", f"`kid` must be 1-{MAX_KID_CHARS} printable characters")

    # 5. Key and signature.
    key = key_for(MappingProxyType(header), MappingProxyType(claims))
    if key is None:
        kid = header.get("kid")
        raise _fail("unknown_kid", f"no key for `kid` `{kid}`" if kid else "token has no `kid`")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    _verify_signature(alg, public_key_of(key), signing_input, signature)
    return claims


def verify_embedded_jwk_jws(
    token: str, *, algorithms: Collection[str], typ: Collection[str], max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a JWS signed by the public key in its own ``jwk`` header (DPoP proofs).

    Returns ``(jwk, claims)``; the claims are NOT checked (proofs have no ``exp``): the
    caller checks them and pins the key by its thumbprint. All other header rules of
    :func:`verify_jwt` apply; a private key in ``jwk`` is refused.
    """
    if isinstance(algorithms, str) or isinstance(typ, str):
        raise TypeError("algorithms and typ must be collections of strings, not a string")
    allowed = frozenset(algorithms)
    if not allowed or not allowed <= SUPPORTED_ALGORITHMS:
        raise ValueError(f"algorithms must be a non-empty subset of {sorted(SUPPORTED_ALGORITHMS)}")
    seen: dict[str, Any] = {}

    def key_for(header: Mapping[str, Any], _claims: Mapping[str, Any]) -> Any:
        jwk = header.get("jwk")
        if not isinstance(jwk, Mapping):
            raise _fail("header_key_rejected", "a `jwk` header with the public key is required")
        try:
            key = load_jwk(jwk)
        except InvalidRequest as exc:
            raise _fail("header_key_rejected", f"`jwk` header: {exc.message}") from exc
        seen["jwk"] = dict(jwk)
        return key

    claims = _verify_jws(
        token,
        key_for=key_for,
        allowed=allowed,
        typ=typ,
        require_typ=True,
        max_bytes=max_bytes,
        embedded_jwk=True,
    )
    return seen["jwk"], claims


def key_by_kid(lookup: Callable[[str], Any]) -> KeyLookup:
    """A ``key_for`` that chooses the key by the header's ``kid`` alone (no ``kid``: none)."""

    def key_for(header: Mapping[str, Any], _claims: Mapping[str, Any]) -> Any:
        kid = header.get("kid")
        return lookup(kid) if isinstance(kid, str) else None

    return key_for


def sign_jwt(
    claims: Mapping[str, Any],
    private_key: Any,
    *,
    kid: str | None,
    typ: str,
    alg: str = "ES256",
    jwk: Mapping[str, Any] | None = None,
) -> str:
    """Sign ``claims`` as a compact JWS with header ``{alg, kid, typ}``.

    ``jwk`` (with ``kid=None``) embeds the public key instead, as DPoP proofs do.
    """
    if alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"unsupported alg `{alg}`")
    header: dict[str, Any] = {"alg": alg, "typ": typ}
    if jwk is not None:
        if kid is not None or any(m in jwk for m in PRIVATE_MEMBERS):
            raise ValueError("an embedded jwk must be public and comes without a kid")
        header["jwk"] = dict(jwk)
    elif kid is None or not _valid_kid(kid):
        raise ValueError("kid must be 1-128 printable characters")
    else:
        header["kid"] = kid
    # allow_nan=False: never emit a token our own verifier would refuse.
    enc = [
        b64url_encode(json.dumps(part, separators=(",", ":"), allow_nan=False).encode())
        for part in (header, dict(claims))
    ]
    signing_input = ".".join(enc).encode("ascii")
    return f"{enc[0]}.{enc[1]}.{b64url_encode(_sign(alg, private_key, signing_input))}"


def _sign(alg: str, private_key: Any, signing_input: bytes) -> bytes:
    try:
        _check_key_fits(alg, public_key_of(private_key))
    except Unauthenticated as exc:  # a signing-side mismatch is a caller bug, not a 401
        raise ValueError(exc.message) from None
    hash_alg = _HASHES[alg[2:]]()
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hash_alg)))
        size = (private_key.curve.key_size + 7) // 8
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif isinstance(private_key, rsa.RSAPrivateKey):
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if alg.startswith("RS")
            else padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        )
        sig = private_key.sign(signing_input, pad, hash_alg)
    else:
        raise ValueError("private_key must be an EC or RSA private key")
    return sig


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_float(v) for v in value)
    return False


def _claims_json(claims: Mapping[str, Any]) -> bytes:
    """The bytes :func:`sign_jwt` would encode for ``claims``, for less.

    orjson writes what ``json.dumps(separators=(",", ":"))`` writes whenever its output
    is plain ASCII without an escape and nothing in it is a float (the two spell floats,
    NaN included, differently); any other payload takes ``json.dumps`` itself."""
    if not _has_float(claims):
        try:
            out = orjson.dumps(claims)
        except TypeError:  # orjson.JSONEncodeError: a big int, a non-str key, …
            pass
        else:
            if out.isascii() and b"\\" not in out:
                return out
    return json.dumps(dict(claims), separators=(",", ":"), allow_nan=False).encode()


class EcSigner:
    """:func:`sign_jwt` for one EC key, ``kid`` and ``typ``, with the per-key work done once.

    The header's encoding, the check that the key fits ``alg`` and the ECDSA parameters
    are fixed at construction: a token costs one claims encoding and one ECDSA sign (the
    access tokens minted on the authorize hot path, ``credentials.connectors.jwt``). The
    tokens are byte for byte those of :func:`sign_jwt` but for the (randomised) signature.
    """

    __slots__ = ("_ecdsa", "_prefix", "_size", "kid", "private_key")

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey, *, kid: str, typ: str, alg: str = "ES256"
    ) -> None:
        if alg not in _EC_CURVES:
            raise ValueError(f"unsupported alg `{alg}` for an EC signer")
        if not _valid_kid(kid):
            raise ValueError("kid must be 1-128 printable characters")
        try:
            _check_key_fits(alg, public_key_of(private_key))
        except Unauthenticated as exc:
            raise ValueError(exc.message) from None
        header = {"alg": alg, "typ": typ, "kid": kid}  # sign_jwt's order
        self.private_key = private_key
        self.kid = kid
        self._prefix = (
            b64url_encode(json.dumps(header, separators=(",", ":"), allow_nan=False).encode()) + "."
        )
        self._ecdsa = ec.ECDSA(_HASHES[alg[2:]]())
        self._size = (private_key.curve.key_size + 7) // 8

    def sign(self, claims: Mapping[str, Any]) -> str:
        signed = self._prefix + b64url_encode(_claims_json(claims))
        r, s = decode_dss_signature(self.private_key.sign(signed.encode("ascii"), self._ecdsa))
        return f"{signed}.{b64url_encode(r.to_bytes(self._size, 'big') + s.to_bytes(self._size, 'big'))}"


def sign_detached(payload: bytes, private_key: Any, *, kid: str, typ: str, alg: str = "ES256") -> str:
    """A JWS over ``payload`` with the payload left out (RFC 7515 appendix F): ``header..sig``.

    The signer keeps the exact payload bytes (a file) next to the signature; the verifier
    puts them back with :func:`verify_detached`.
    """
    if alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"unsupported alg `{alg}`")
    if not _valid_kid(kid):
        raise ValueError("kid must be 1-128 printable characters")
    header = b64url_encode(json.dumps({"alg": alg, "kid": kid, "typ": typ}, separators=(",", ":")).encode())
    signing_input = f"{header}.{b64url_encode(payload)}".encode("ascii")
    return f"{header}..{b64url_encode(_sign(alg, private_key, signing_input))}"


def verify_detached(
    jws: str,
    payload: bytes,
    *,
    key_for: KeyLookup,
    algorithms: Collection[str],
    typ: Collection[str],
    max_bytes: int = 64 * 1024 * 1024,
) -> dict[str, Any]:
    """Verify a detached JWS over ``payload`` with every header rule of :func:`verify_jwt`;
    return the payload parsed as a strict JSON object. Raises ``Unauthenticated``."""
    if isinstance(algorithms, str) or isinstance(typ, str):
        raise TypeError("algorithms and typ must be collections of strings, not a string")
    allowed = frozenset(algorithms)
    if not allowed or not allowed <= SUPPORTED_ALGORITHMS:
        raise ValueError(f"algorithms must be a non-empty subset of {sorted(SUPPORTED_ALGORITHMS)}")
    parts = jws.strip().split(".") if isinstance(jws, str) else []
    if len(parts) != 3 or parts[1]:
        raise _fail("token_malformed", "a detached JWS is `header..signature`")
    token = f"{parts[0]}.{b64url_encode(payload)}.{parts[2]}"
    return _verify_jws(
        token,
        key_for=key_for,
        allowed=allowed,
        typ=typ,
        require_typ=True,
        max_bytes=max_bytes,
        embedded_jwk=False,
    )

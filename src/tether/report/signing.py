"""Signed reports: a detached JWS (ES256) over the exact bytes of ``report.json``.

The signature sits next to the report as ``report.json.jws`` and is made with the key
that signs the broker's audit checkpoints, so an auditor who trusts the broker's public
keys (its JWKS, or the store's ``signing_keys``) can check a report that was mailed to
them: any changed byte fails, and a signature moved onto another report fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.errors import InvalidRequest, Unauthenticated
from tether.identity.jwt import key_by_kid, load_jwk, sign_detached, verify_detached
from tether.identity.keys import KeyRing

REPORT_TYP = "tether-report+jws"
SIGNATURE_SUFFIX = ".jws"


def sign_report(payload: bytes, keys: KeyRing) -> str:
    key = keys.signing_key()
    return sign_detached(payload, key.private_key, kid=key.kid, typ=REPORT_TYP)


def signature_path(report: Path) -> Path:
    return report.with_name(report.name + SIGNATURE_SUFFIX)


def verify_report(payload: bytes, jws: str, jwks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The report (parsed) when ``jws`` is a valid signature over ``payload`` by a key of
    ``jwks`` (kid → public JWK); raises ``Unauthenticated`` with the failing check's code."""

    def lookup(kid: str) -> Any:
        jwk = jwks.get(kid)
        return None if jwk is None else load_jwk(jwk)

    report = verify_detached(
        jws, payload, key_for=key_by_kid(lookup), algorithms=("ES256",), typ=(REPORT_TYP,)
    )
    if report.get("report") != "tether-compliance-report":
        raise Unauthenticated("the signed document is not a tether report", code="report_malformed")
    return report


def read_signed(path: Path, signature: Path | None = None) -> tuple[bytes, str, Path]:
    sig = signature or signature_path(path)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read `{path}`: {exc.strerror}", code="report_unreadable") from None
    try:
        jws = sig.read_text("ascii").strip()
    except FileNotFoundError:
        raise InvalidRequest(
            f"no signature `{sig}` next to `{path}`; pass it with `--signature`", code="report_unsigned"
        ) from None
    except (OSError, UnicodeDecodeError):
        raise InvalidRequest(f"cannot read the signature `{sig}`", code="report_unreadable") from None
    return payload, jws, sig


def header_kid(jws: str) -> str | None:
    from tether.identity.jwt import b64url_decode

    try:
        head = json.loads(b64url_decode(jws.split(".", 1)[0]))
    except (ValueError, IndexError):
        return None
    kid = head.get("kid") if isinstance(head, dict) else None
    return kid if isinstance(kid, str) else None


__all__ = ["REPORT_TYP", "header_kid", "read_signed", "sign_report", "signature_path", "verify_report"]

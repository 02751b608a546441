"""PKCE (RFC 7636) as OAuth 2.1 requires it: S256 only, verifiers of the right shape."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from tether.oauth.errors import OAuthError

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 §4.1
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")  # base64url(SHA-256) without padding


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def check_challenge(challenge: str | None, method: str | None) -> str:
    """The challenge of an authorization request; missing or ``plain`` is refused (OAuth 2.1 §4.1.1)."""
    if not challenge:
        raise OAuthError("invalid_request", "`code_challenge` is required (PKCE with S256)")
    if method != "S256":
        raise OAuthError("invalid_request", "`code_challenge_method` must be `S256`; `plain` is not accepted")
    if not _CHALLENGE.match(challenge):
        raise OAuthError("invalid_request", "`code_challenge` is not a base64url SHA-256 digest")
    return challenge


def verify(verifier: str | None, challenge: str) -> None:
    """The token request's verifier against the stored challenge (constant time)."""
    if not verifier or not _VERIFIER.match(verifier):
        raise OAuthError("invalid_grant", "`code_verifier` is missing or malformed")
    if not hmac.compare_digest(s256(verifier), challenge):
        raise OAuthError("invalid_grant", "`code_verifier` does not match the code challenge")

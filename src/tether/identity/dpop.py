"""Sender-constrained task tokens with DPoP (RFC 9449).

An agent that sends a DPoP proof when it opens a task gets a task token carrying
``cnf.jkt``, the thumbprint of its proof key. Every later use of that token must carry a
fresh proof signed by the same key, for this method and URL, with ``ath`` = hash of the
token. A stolen token without the private key is useless.

Replays are caught by a ``jti`` cache *in the store* (a unique key insert), so two
broker processes sharing PostgreSQL reject the same replayed proof. Codes
(``Unauthenticated`` unless noted):

    dpop_required        a proof is required here (setting ``identity.dpop``) and none came
    dpop_proof_missing   the token is bound (``cnf.jkt``) and the request carries no proof
    dpop_invalid         the proof is malformed, badly signed, or has a bad claim
    dpop_method_mismatch ``htm`` is not this request's method
    dpop_url_mismatch    ``htu`` is not this request's URL
    dpop_stale           ``iat`` outside the accepted window
    dpop_ath_mismatch    ``ath`` is not the hash of the presented token
    dpop_key_mismatch    the proof key is not the one the token is bound to
    dpop_replay          this proof (``jti``) was already used
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from tether.errors import TetherError, Unauthenticated
from tether.identity.jwt import (
    b64url_encode,
    jwk_thumbprint,
    public_jwk,
    sign_jwt,
    verify_embedded_jwk_jws,
)
from tether.store.db import Database
from tether.store.identity_tables import dpop_jtis
from tether.tokens import TaskTokenClaims

DPOP_TYP = "dpop+jwt"
#: Asymmetric only (RFC 9449 section 4.2 forbids MAC algorithms and `none`).
ALGORITHMS = ("ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256")
MAX_PROOF_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A request's DPoP header as the server saw it, with the method and URL it arrived on."""

    proof: str | None
    method: str
    url: str
    count: int = 1  # how many DPoP headers arrived; more than one is refused

    @property
    def present(self) -> bool:
        return self.proof is not None and self.count > 0


def _fail(code: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, code=code)


def token_hash(token: str) -> str:
    return b64url_encode(hashlib.sha256(token.encode("ascii")).digest())


def normalize_url(url: str) -> str:
    """RFC 9449 section 4.3 step 9: compare without query and fragment, scheme and host
    case-insensitive, default ports dropped (RFC 3986 section 6.2.3)."""
    p = urlsplit(url)
    host = (p.hostname or "").lower()
    port = p.port
    if port is not None and not (
        (p.scheme.lower() == "https" and port == 443) or (p.scheme.lower() == "http" and port == 80)
    ):
        host = f"{host}:{port}"
    return urlunsplit((p.scheme.lower(), host, p.path or "/", "", ""))


class ReplayCache:
    """Seen ``(jkt, jti)`` pairs in the store, shared by every broker on that store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def remember(self, jkt: str, jti: str, expires_at: float) -> None:
        key = hashlib.sha256(f"{jkt}:{jti}".encode()).hexdigest()
        try:
            with self.db.begin() as conn:
                conn.execute(insert(dpop_jtis).values(key=key, expires_at=expires_at))
        except TetherError as exc:
            # db.guard turned the unique-key violation into Unavailable; look underneath.
            if isinstance(exc.__cause__, IntegrityError):
                raise _fail("dpop_replay", "this DPoP proof was already used; send a fresh one") from None
            raise

    def purge(self, now: float | None = None) -> int:
        with self.db.begin() as conn:
            res = conn.execute(delete(dpop_jtis).where(dpop_jtis.c.expires_at < (now or time.time())))
        return int(res.rowcount or 0)


class DpopVerifier:
    def __init__(
        self,
        replay: ReplayCache,
        *,
        window_seconds: int,
        leeway_seconds: int,
        required: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replay, self.window, self.leeway = replay, window_seconds, leeway_seconds
        self.required, self._clock = required, clock

    def verify(self, proof: DpopProof, *, access_token: str | None) -> str:
        """Check one proof for this request, remember its ``jti``; return its key thumbprint."""
        jkt, jti, iat = self._check(proof, access_token)
        self._remember(jkt, jti, iat)
        return jkt

    def _check(self, proof: DpopProof, access_token: str | None) -> tuple[str, str, float]:
        if proof.count > 1:
            raise _fail("dpop_invalid", "send exactly one `DPoP` header")
        if proof.proof is None:
            raise _fail("dpop_proof_missing", "send a DPoP proof in the `DPoP` header")
        try:
            jwk, claims = verify_embedded_jwk_jws(
                proof.proof, algorithms=ALGORITHMS, typ=(DPOP_TYP,), max_bytes=MAX_PROOF_BYTES
            )
        except Unauthenticated as exc:
            raise _fail("dpop_invalid", f"the DPoP proof is invalid ({exc.code}): {exc.message}") from exc
        jti, htm, htu, iat = (claims.get(k) for k in ("jti", "htm", "htu", "iat"))
        if not isinstance(jti, str) or not 8 <= len(jti) <= 256:
            raise _fail("dpop_invalid", "the proof needs a `jti` of 8-256 characters")
        if not isinstance(htm, str) or not isinstance(htu, str) or len(htu) > 4096:
            raise _fail("dpop_invalid", "the proof needs `htm` and `htu` strings")
        if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
            raise _fail("dpop_invalid", "the proof needs a numeric `iat`")
        if htm != proof.method:
            raise _fail("dpop_method_mismatch", f"the proof is for `{htm[:16]}`, not `{proof.method}`")
        try:
            same_url = normalize_url(htu) == normalize_url(proof.url)
        except ValueError:  # a bad port in htu
            same_url = False
        if not same_url:
            raise _fail("dpop_url_mismatch", "the proof's `htu` is not this request's URL")
        now = self._clock()
        if iat < now - self.window or iat > now + self.leeway:
            raise _fail("dpop_stale", f"the proof's `iat` must be within {self.window} s of now")
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str) or not secrets.compare_digest(ath, token_hash(access_token)):
                raise _fail("dpop_ath_mismatch", "the proof's `ath` is not the hash of this token")
        return jwk_thumbprint(jwk), jti, float(iat)

    def _remember(self, jkt: str, jti: str, iat: float) -> None:
        # Only proofs that passed every other check reach the cache, so junk cannot fill it.
        self.replay.remember(jkt, jti, iat + self.window + 2 * self.leeway)

    def check_bound(self, token: str, claims: TaskTokenClaims, proof: DpopProof | None) -> None:
        """The sender constraint of one task-token use (called right after the signature)."""
        if claims.jkt is None:
            if self.required:
                raise _fail(
                    "dpop_required",
                    "this broker requires DPoP-bound task tokens; open the task with a DPoP proof",
                )
            return
        if proof is None or not proof.present:
            raise _fail("dpop_proof_missing", "this task token is DPoP-bound: send a proof in `DPoP`")
        jkt, jti, iat = self._check(proof, token)
        if not secrets.compare_digest(jkt, claims.jkt):
            raise _fail("dpop_key_mismatch", "the proof is not signed by the key this token is bound to")
        self._remember(jkt, jti, iat)

    def bind_at_open(self, proof: DpopProof | None) -> str | None:
        """The thumbprint to bind a new task to, or None when unbound tokens are allowed."""
        if proof is None or not proof.present:
            if self.required:
                raise _fail("dpop_required", "this broker requires a DPoP proof when a task is opened")
            return None
        return self.verify(proof, access_token=None)


def make_proof(
    private_key: Any,
    method: str,
    url: str,
    *,
    access_token: str | None = None,
    iat: float | None = None,
    jti: str | None = None,
    alg: str = "ES256",
) -> str:
    """A DPoP proof (client side): what an agent sends in the ``DPoP`` header."""
    claims: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": method,
        "htu": url,
        "iat": int(time.time() if iat is None else iat),
    }
    if access_token is not None:
        claims["ath"] = token_hash(access_token)
    jwk = public_jwk(private_key.public_key(), "x")
    jwk = {k: v for k, v in jwk.items() if k not in ("kid", "use", "alg")}
    return sign_jwt(claims, private_key, kid=None, typ=DPOP_TYP, alg=alg, jwk=jwk)


def thumbprint(private_key: Any) -> str:
    jwk = public_jwk(private_key.public_key(), "x")
    return jwk_thumbprint(jwk)

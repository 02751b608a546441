"""Task tokens: the signed JWT an agent carries for one task.

Shaped after OAuth Transaction Tokens (draft-ietf-oauth-transaction-tokens):
``typ: txntoken+jwt``, ``txn`` = task id, ``sub`` = the agent, ``req_wl`` = the workload
that asked, ``tctx`` = intent and delegator, ``scope``, and for delegated tasks the
RFC 8693 ``act`` chain (nearest delegating agent outermost). ``cnf.jkt`` binds the token
to a DPoP key (RFC 9449) where the task was opened with a proof.

A valid signature is necessary, not sufficient: the broker still checks the task's
state in the store on every use, so a closed or revoked task's token is dead at once.

An agent presents the same token on every action of its task, so :class:`TaskTokens`
remembers the tokens whose signature it verified (a bounded map keyed by the exact token
text and audience, as Envoy's JWT filter does): a repeat pays the claim checks (expiry,
issuer, audience) again but not the parse and the ECDSA verify. An entry counts only
while its signing key is still the ring's current key for that ``kid``, so a retired or
expired key stops every token it signed at once. Only verified tokens enter the map.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tether.errors import Unauthenticated
from tether.identity.jwt import check_claims, key_by_kid, sign_jwt, verify_jwt
from tether.identity.keys import KeyRing
from tether.model import Task

TASK_TOKEN_TYP = "txntoken+jwt"  # noqa: S105 (a media type, not a secret)
#: Verified tokens remembered (about 1 KiB each); more live tasks than this only means misses.
VERIFIED_KEPT = 4096


def act_claim(chain: tuple[str, ...]) -> dict[str, Any] | None:
    """RFC 8693 §4.1: the current actor outermost, prior actors nested inside."""
    act: dict[str, Any] | None = None
    for sub in reversed(chain):
        act = {"sub": sub, **({"act": act} if act else {})}
    return act


def scope_string(task: Task) -> str:
    return " ".join(f"{g.action}@{g.resource}" for g in task.scope)


@dataclass(frozen=True, slots=True)
class TaskTokenClaims:
    task_id: str
    agent: str
    jkt: str | None
    raw: Mapping[str, Any]


class TaskTokens:
    def __init__(self, keys: KeyRing, *, issuer: str, audience: str, leeway: int, max_bytes: int) -> None:
        self._keys = keys
        self.issuer = issuer
        self.audience = audience
        self._leeway = leeway
        self._max_bytes = max_bytes
        # (token, audience) → (claims, kid, the key object that verified it). Read without
        # a lock (a dict lookup is atomic); writers take ``_verified_lock`` to evict.
        self._verified: dict[tuple[str, str], tuple[TaskTokenClaims, str, object]] = {}
        self._verified_lock = threading.Lock()

    def mint(
        self,
        task: Task,
        *,
        now: float,
        audience: str | None = None,
        client_id: str = "",
        expires_at: float | None = None,
        jkt: str | None = None,
    ) -> str:
        """The task's token; ``audience`` names one protected resource (RFC 8707) instead of
        the broker, for OAuth access tokens that only that resource's gateway accepts.
        ``expires_at`` shortens it (never past the task's own expiry); ``jkt`` binds this
        token to a DPoP key (RFC 9449) when the task itself was opened without one."""
        key = self._keys.signing_key()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience or self.audience,
            "sub": task.agent,
            "txn": task.id,
            "jti": secrets.token_urlsafe(12),
            "iat": int(now),
            "exp": int(min(task.expires_at, expires_at or task.expires_at)),
            "scope": scope_string(task),
            "req_wl": task.agent,
            "tctx": {
                "intent": task.intent,
                "depth": task.depth,
                "root_txn": task.root_id,
                "delegator": (
                    {"sub": task.delegator.subject, "iss": task.delegator.issuer} if task.delegator else None
                ),
            },
        }
        act = act_claim(task.act_chain)
        if act:
            claims["act"] = act
        if task.cnf_jkt or jkt:
            claims["cnf"] = {"jkt": task.cnf_jkt or jkt}
        if client_id:
            claims["client_id"] = client_id  # RFC 9068 §2.2: the OAuth client it was issued to
        return sign_jwt(claims, key.private_key, kid=key.kid, typ=TASK_TOKEN_TYP)

    def verify(self, token: str, *, now: float, audience: str | None = None) -> TaskTokenClaims:
        """Signature, ``typ``, issuer, audience and expiry; raises ``Unauthenticated``.

        ``audience`` is the enforcement point's own resource URI when it has one (an OAuth
        protected resource): then only tokens minted for exactly that resource pass, and a
        token minted for a resource never passes where the broker's audience is expected.
        """
        aud = audience or self.audience
        seen = self._verified.get((token, aud))
        if seen is not None:
            known, kid, key = seen
            if self._keys.verification_key(kid) is key:
                check_claims(
                    known.raw,
                    audience=aud,
                    issuer=self.issuer,
                    leeway=self._leeway,
                    now=now,
                    required=("exp", "txn", "sub"),
                )
                return known
        used: list[tuple[str, object]] = []

        def key_for(kid: str) -> object:
            key = self._keys.verification_key(kid)
            used.append((kid, key))
            return key

        claims = verify_jwt(
            token,
            key_for=key_by_kid(key_for),
            algorithms=("ES256",),
            audience=aud,
            issuer=self.issuer,
            typ=(TASK_TOKEN_TYP,),
            leeway=self._leeway,
            now=now,
            max_bytes=self._max_bytes,
            required=("exp", "txn", "sub"),
        )
        txn, sub = claims.get("txn"), claims.get("sub")
        if not isinstance(txn, str) or not isinstance(sub, str):
            raise Unauthenticated("task token lacks `txn` or `sub`", code="token_malformed")
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        verified = TaskTokenClaims(txn, sub, jkt if isinstance(jkt, str) else None, MappingProxyType(claims))
        if len(used) == 1 and used[0][1] is not None:
            with self._verified_lock:
                while len(self._verified) >= VERIFIED_KEPT:
                    del self._verified[next(iter(self._verified))]  # the oldest entry
                self._verified[(token, aud)] = (verified, *used[0])
        return verified

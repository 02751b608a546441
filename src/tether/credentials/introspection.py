"""RFC 7662 introspection and RFC 7009 revocation of tokens Tether issued.

Two kinds of token are known: ``jwt`` credentials (``typ: at+jwt``, ``jti`` = lease id)
and task tokens (``typ: txntoken+jwt``). A token is active only when its signature,
issuer and expiry verify AND the store says its lease and its task are still live: a
signature alone says nothing about revocation.

Anything else — forged, expired, revoked, unknown, malformed — introspects as exactly
``{"active": false}`` (RFC 7662 §2.2): no hint of which check failed. Revoking an
unknown or invalid token is not an error (RFC 7009 §2.2): the answer is the same 200.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from tether.credentials import leases as ls
from tether.credentials.connectors.jwt import ACCESS_TOKEN_TYP
from tether.credentials.service import Credentials
from tether.errors import NotFound, TetherError
from tether.identity.jwt import ANY, verify_jwt
from tether.model import TaskState
from tether.seams import BrokerParts
from tether.store import repo

INACTIVE: dict[str, Any] = {"active": False}


class Introspector:
    def __init__(self, rt: BrokerParts, creds: Credentials) -> None:
        self.rt = rt
        self.creds = creds

    def _access_claims(self, token: str) -> dict[str, Any]:
        keys = self.rt.keys

        def key_for(header: Mapping[str, Any], _claims: Mapping[str, Any]) -> Any:
            kid = header.get("kid")
            return keys.verification_key(kid) if isinstance(kid, str) else None

        s = self.rt.settings
        return verify_jwt(
            token,
            key_for=key_for,
            algorithms=("ES256",),
            audience=ANY,
            issuer=s.broker_issuer,
            typ=(ACCESS_TOKEN_TYP,),
            leeway=s.limits.jwt_leeway_seconds,
            now=self.rt.broker.clock(),
            max_bytes=s.limits.max_token_bytes,
            required=("exp", "jti", "txn", "sub", "aud"),
        )

    def introspect(self, token: str) -> dict[str, Any]:
        try:
            return self._introspect(token)
        except TetherError:
            return dict(INACTIVE)

    def _introspect(self, token: str) -> dict[str, Any]:
        now = self.rt.broker.clock()
        try:
            claims = self._access_claims(token)
        except TetherError:
            claims = None
        if claims is not None:
            with self.rt.db.read() as conn:
                lease = ls.get_lease(conn, str(claims["jti"]))
                task = repo.get_task(conn, str(claims["txn"]))
            if (
                lease is None
                or lease.state is not ls.LeaseState.ACTIVE
                or lease.expires_at <= now
                or task is None
                or not task.is_active(now)
                or lease.task_id != task.id
            ):
                return dict(INACTIVE)
            return {
                "active": True,
                "token_type": "access_token",
                "scope": claims.get("scope"),
                "client_id": claims.get("client_id"),
                "sub": claims["sub"],
                "aud": claims["aud"],
                "iss": claims.get("iss"),
                "exp": claims["exp"],
                "iat": claims.get("iat"),
                "jti": claims["jti"],
                "txn": claims["txn"],
                "act": claims.get("act"),
            }
        tclaims = self.rt.broker.verify_token(token)
        with self.rt.db.read() as conn:
            task = repo.get_task(conn, tclaims.task_id)
        if task is None or task.agent != tclaims.agent or not task.is_active(now):
            return dict(INACTIVE)
        raw = tclaims.raw
        return {
            "active": True,
            "token_type": "txn_token",
            "scope": raw.get("scope"),
            "sub": tclaims.agent,
            "aud": raw.get("aud"),
            "iss": raw.get("iss"),
            "exp": raw.get("exp"),
            "iat": raw.get("iat"),
            "jti": raw.get("jti"),
            "txn": tclaims.task_id,
            "act": raw.get("act"),
        }

    def revoke(self, token: str, *, by: str) -> None:
        """RFC 7009: revoke a credential (its lease) or a task token (its task and subtree)."""
        try:
            claims = self._access_claims(token)
        except TetherError:
            claims = None
        if claims is not None:
            with contextlib.suppress(NotFound):
                self.creds.revoke_lease(str(claims["jti"]), by=by, reason="token_revoked")
            return
        try:
            tclaims = self.rt.broker.verify_token(token)
        except TetherError:
            return  # unknown or invalid: nothing to revoke, and the same answer
        with self.rt.db.read() as conn:
            task = repo.get_task(conn, tclaims.task_id)
        if task is not None and task.agent == tclaims.agent and task.state is TaskState.ACTIVE:
            self.rt.broker.revoke(task_id=task.id, by=by)

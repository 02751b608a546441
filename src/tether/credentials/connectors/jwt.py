"""The ``jwt`` connector: a Tether-signed access token for one resource server.

Shaped after RFC 9068 (JWT profile for OAuth 2.0 access tokens): ``typ: at+jwt``,
``aud`` = the one service, ``scope``, ``sub`` = the agent, ``client_id`` = the agent,
``jti`` = the lease id, plus ``txn`` = the task id and the RFC 8693 ``act`` chain of a
delegated task. Resource servers verify it offline against ``/.well-known/jwks.json``
and follow the revocation feed for ``jti`` and ``txn`` (``tether.credentials.middleware``).

Revocation touches no external system: the token is signed, so revoking it means
publishing its ``jti`` on the feed, and its short ``exp`` bounds the damage of a
resource server that does not follow the feed.
"""

from __future__ import annotations

from typing import Any

from tether.catalog import Resource
from tether.credentials.connectors.base import Minted, MintRequest
from tether.credentials.leases import Lease
from tether.identity.jwt import EcSigner
from tether.identity.keys import KeyRing
from tether.tokens import act_claim

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105  (a media type, not a password)


class JwtConnector:
    name = "jwt"
    offline_revoke = True

    def __init__(self, keys: KeyRing, issuer: str) -> None:
        self._keys = keys
        self.issuer = issuer
        self._signer: EcSigner | None = None  # for the current key; rebuilt when it rotates

    def _signer_for(self, private_key: Any, kid: str) -> EcSigner:
        signer = self._signer
        if signer is None or signer.private_key is not private_key or signer.kid != kid:
            signer = self._signer = EcSigner(private_key, kid=kid, typ=ACCESS_TOKEN_TYP)
        return signer

    def plan(self, resource: Resource, lease_id: str) -> dict[str, Any]:
        return {}

    def mint(self, req: MintRequest) -> Minted:
        lease, task = req.lease, req.task
        key = self._keys.signing_key()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": lease.audience,
            "sub": task.agent,
            "client_id": task.agent,
            "txn": task.id,
            "jti": lease.id,
            "scope": lease.scope,
            "iat": int(lease.issued_at),
            "nbf": int(lease.issued_at),
            # Never round up past the lease (and so the task): floor the expiry.
            "exp": int(lease.expires_at),
        }
        act = act_claim(task.act_chain)
        if act:
            claims["act"] = act
        token = self._signer_for(key.private_key, key.kid).sign(claims)
        return Minted(
            for_agent={
                "kind": "jwt",
                "token": token,
                "expires_at": float(claims["exp"]),
                "audience": lease.audience,
            },
            material={"kid": key.kid},
        )

    def revoke(self, lease: Lease) -> None:
        return None  # the feed entry written with the lease change is the revocation

    def health(self) -> None:
        self._keys.signing_key()  # raises Unavailable(no_signing_key)

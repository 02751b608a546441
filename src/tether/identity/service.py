"""The identity layer as the API sees it: who is opening a task, for whom, bound to what key.

:class:`IdentityService` is built by :mod:`tether.identity.wiring` and kept in
``Runtime.identity``. Every refusal here is an audited deny before the error
leaves, so probing with forged credentials shows up in the audit log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from typing import Any

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.errors import TetherError, Unauthenticated
from tether.identity import registrations
from tether.identity.dpop import DpopProof, DpopVerifier
from tether.identity.keys import KeyRing
from tether.identity.oidc import DelegatorVerifier, OidcWorkloadVerifier
from tether.identity.svid import SvidVerifier
from tether.model import Delegator, Workload
from tether.store.db import Database

#: How often consumers of the SPIFFE bundle endpoint should poll (seconds). Keys rotate
#: weekly with a day of overlap, so five minutes leaves a wide margin.
BUNDLE_REFRESH_HINT = 300


class LocalKeys(Mapping[str, Any]):
    """The broker's own verification keys by kid, as a trust bundle for its trust domain."""

    def __init__(self, keys: KeyRing) -> None:
        self._keys = keys

    def __getitem__(self, kid: str) -> Any:
        key = self._keys.verification_key(kid)
        if key is None:
            raise KeyError(kid)
        return key

    def __iter__(self) -> Iterator[str]:
        return iter([k.kid for k in self._keys.verifying_keys()])

    def __len__(self) -> int:
        return len(self._keys.verifying_keys())


def jwt_bundle(keys: KeyRing) -> dict[str, Any]:
    """The broker's JWT authorities as a SPIFFE bundle (JWKS + ``spiffe_*`` members)."""
    live = keys.verifying_keys()
    return {
        "keys": [{**k.public_jwk, "use": "jwt-svid"} for k in live],
        # Increases whenever a key is added (rotation); consumers use it to spot updates.
        "spiffe_sequence": int(max((k.created_at for k in live), default=0)),
        "spiffe_refresh_hint": BUNDLE_REFRESH_HINT,
    }


def peek_issuer(token: str, max_bytes: int) -> str | None:
    """The unverified ``iss`` of a JWT, only to choose which verifier runs; never trusted."""
    try:
        if len(token) > max_bytes:
            return None
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError, RecursionError):  # deep nesting: not a JWT either
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


class IdentityService:
    def __init__(
        self,
        *,
        db: Database,
        audit: AuditChain,
        svids: SvidVerifier,
        trust_domain: str,
        dpop: DpopVerifier,
        oidc: Mapping[str, OidcWorkloadVerifier],
        delegators: Mapping[str, DelegatorVerifier],
        max_token_bytes: int,
    ) -> None:
        self.db, self.audit, self.svids, self.trust_domain = db, audit, svids, trust_domain
        self.dpop, self.oidc, self.delegators = dpop, dict(oidc), dict(delegators)
        self.max_token_bytes = max_token_bytes

    def _deny(self, stage: str, exc: TetherError, token: str | None = None) -> None:
        payload: dict[str, Any] = {"action": "task:open", "outcome": "deny", "code": exc.code, "stage": stage}
        if token is not None:
            iss = peek_issuer(token, self.max_token_bytes)
            payload["claimed_issuer"] = iss[:256] if iss else None
        with self.audit.unit() as u:
            u.emit(ev.DECISION, payload)

    def authenticate(self, token: str) -> Workload:
        """A JWT-SVID (SPIRE, another broker, or ours) or a token of a configured OIDC issuer."""
        try:
            verifier = self.oidc.get(peek_issuer(token, self.max_token_bytes) or "")
            return verifier.verify(token) if verifier is not None else self._svid(token)
        except Unauthenticated as exc:
            self._deny("authenticate", exc, token)
            raise

    def _svid(self, token: str) -> Workload:
        workload = self.svids.verify(token)
        if workload.trust_domain != self.trust_domain:
            return workload
        # Our own SVID: it was issued to a locally attested process. Attributes come from
        # its registration entries; keys on which entries disagree are dropped.
        with self.db.read() as conn:
            entries = registrations.list_entries(conn, spiffe_id=workload.spiffe_id)
        attrs: dict[str, str] = {}
        conflicts: set[str] = set()
        for e in entries:
            for k, v in e.attributes.items():
                if attrs.get(k, v) != v:
                    conflicts.add(k)
                attrs.setdefault(k, v)
        return Workload(
            workload.spiffe_id,
            workload.trust_domain,
            "unix",
            {k: v for k, v in attrs.items() if k not in conflicts},
        )

    def delegator(self, id_token: str) -> Delegator:
        try:
            verifier = self.delegators.get(peek_issuer(id_token, self.max_token_bytes) or "")
            if verifier is None:
                raise Unauthenticated(
                    "the delegator token is not from a configured delegator issuer",
                    code="delegator_untrusted",
                )
            return verifier.verify(id_token)
        except Unauthenticated as exc:
            self._deny("delegator", exc, id_token)
            raise

    def bind_at_open(self, proof: DpopProof | None) -> str | None:
        try:
            return self.dpop.bind_at_open(proof)
        except Unauthenticated as exc:
            self._deny("dpop", exc)
            raise

"""What the broker answers, as typed records.

The wire shapes themselves are the generated records of ``tether.sdk._wire`` (made from
the broker's wire models, the ones ``/openapi.json`` publishes); these classes add what
a caller wants on top — properties, ``explain()``, secrets kept out of ``repr`` — and turn
an unreadable answer into a fail-closed ``Unavailable``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tether.errors import ErrorCode, InvalidRequest, Unavailable
from tether.model import Grant, Outcome, Reason
from tether.sdk import _wire as wire

__all__ = ["Credential", "Decision", "Delegation", "GrantLike", "grants", "ttl_seconds"]

#: A scope entry as callers like to write it: ``("read", "crm")``, ``{"action": …}`` or a Grant.
GrantLike = Grant | tuple[str, str] | Mapping[str, str]


def grants(scope: Iterable[GrantLike]) -> tuple[wire.Grant, ...]:
    out = []
    for i, g in enumerate(scope):
        if isinstance(g, Grant):
            out.append(wire.Grant(g.action, g.resource))
        elif isinstance(g, tuple) and len(g) == 2:
            out.append(wire.Grant(str(g[0]), str(g[1])))
        elif isinstance(g, Mapping) and set(g) == {"action", "resource"}:
            out.append(wire.Grant(str(g["action"]), str(g["resource"])))
        else:
            raise InvalidRequest(
                f"`scope[{i}]` must be (action, resource), a Grant or {{action, resource}}",
                code="invalid_scope",
                field=f"scope[{i}]",
            )
    return tuple(out)


def unreadable(what: str) -> Unavailable:
    """Fail closed: an answer the client cannot read is never an allow."""
    return Unavailable(f"the broker's {what} could not be read", code=ErrorCode.BAD_BROKER_RESPONSE)


def ttl_seconds(ttl: int | float | timedelta) -> int:
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or seconds < 1:
        raise InvalidRequest("`ttl` must be at least one second", code="invalid_ttl", field="ttl")
    return int(seconds)


@dataclass(frozen=True, slots=True)
class Credential:
    """A short-lived credential for one service, bound to the task (a lease)."""

    lease_id: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def token(self) -> str | None:
        for key in ("token", "access_token", "password"):
            value = self.data.get(key)
            if isinstance(value, str):
                return value
        return None

    @property
    def expires_at(self) -> float | None:
        value = self.data.get("expires_at")
        return float(value) if isinstance(value, int | float) else None

    def __repr__(self) -> str:  # secrets never land in logs by accident
        return f"Credential(lease_id={self.lease_id!r}, keys={sorted(self.data)})"

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Credential:
        lease = body.get("lease_id") or body.get("id")
        if not isinstance(lease, str):
            raise Unavailable(
                "the broker returned a credential without a `lease_id`", code="bad_broker_response"
            )
        return cls(lease, {k: v for k, v in body.items() if k not in ("lease_id",)})


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    decision_id: str
    reasons: tuple[Reason, ...]
    policy_version: str
    approval_id: str | None = None
    code: str | None = None
    credential: Credential | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    def explain(self) -> str:
        why = "; ".join(f"{r.message} [{r.policy_id}]" for r in self.reasons)
        return why or (self.code or self.outcome.value)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Decision:
        try:
            d = wire.AuthorizeResponse.from_wire(body)
        except wire.WireError as exc:
            raise unreadable("decision") from exc
        return cls(
            Outcome(d.decision),
            d.decision_id,
            tuple(Reason(r.policy_id, r.message) for r in d.reasons),
            d.policy_version,
            d.approval_id,
            d.code,
            Credential.parse(d.credential) if d.credential is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Delegation:
    """A single-use offer of part of a task to one child agent (``client.task(delegation=…)``)."""

    id: str
    child: str
    expires_at: float
    scope: tuple[Grant, ...]
    ttl_seconds: int

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Delegation:
        try:
            d = wire.DelegationOffered.from_wire(body)
        except wire.WireError as exc:
            raise unreadable("delegation") from exc
        return cls(
            d.delegation,
            d.child,
            d.expires_at,
            tuple(Grant(g.action, g.resource) for g in d.scope),
            d.ttl_seconds,
        )

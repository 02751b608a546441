"""The vocabulary of Tether as typed records (see docs/architecture.md, "Vocabulary").

Records are immutable; the store and the broker build new ones rather than mutate.
Timestamps are POSIX seconds (float) in UTC so that comparisons never cross time zones.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class TaskState(enum.StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Outcome(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL_REQUIRED = "approval_required"


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    GRANTED = "granted"
    REJECTED = "rejected"
    CONSUMED = "consumed"
    #: Nobody answered before ``expires_at``; set by the leader's pass (``Broker.expire_approvals``).
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Workload:
    """An authenticated non-human identity.

    ``attestation`` says how it was proven (``jwt-svid``, ``oidc``, ``unix``);
    ``attributes`` come from its registration entry or token claims.
    """

    spiffe_id: str
    trust_domain: str
    attestation: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delegator:
    """The human or upstream principal on whose behalf a task runs."""

    subject: str
    issuer: str


@dataclass(frozen=True, slots=True)
class Grant:
    """One entry of a task scope: an action on a resource (or a resource group).

    ``resource`` is a catalog id. A service id covers every tool and dataset whose
    parent is that service.
    """

    action: str
    resource: str

    def to_dict(self) -> dict[str, str]:
        return {"action": self.action, "resource": self.resource}


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    agent: str
    delegator: Delegator | None
    intent: str
    description: str
    scope: tuple[Grant, ...]
    created_at: float
    expires_at: float
    parent_id: str | None
    root_id: str
    depth: int
    state: TaskState
    act_chain: tuple[str, ...] = ()  # SPIFFE IDs of the delegating agents, nearest first
    cnf_jkt: str | None = None  # RFC 9449 thumbprint the task token is bound to
    closed_at: float | None = None
    attestation: str = ""  # how the agent proved itself when the task opened
    agent_attrs: Mapping[str, str] = field(default_factory=dict)  # become Cedar principal tags

    def is_active(self, now: float) -> bool:
        return self.state is TaskState.ACTIVE and now < self.expires_at


@dataclass(frozen=True, slots=True)
class Delegation:
    """A single-use offer from a parent task to one named child agent."""

    id: str
    parent_task_id: str
    child_agent: str
    scope: tuple[Grant, ...]
    ttl_seconds: int
    created_at: float
    expires_at: float
    redeemed_task_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision came out as it did: a determining policy and its message."""

    policy_id: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"policy_id": self.policy_id, "message": self.message}


@dataclass(frozen=True, slots=True)
class Decision:
    id: str
    outcome: Outcome
    reasons: tuple[Reason, ...]
    policy_version: str
    approval_id: str | None = None
    code: str | None = None  # machine-readable reason for a deny before or after Cedar

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "decision": self.outcome.value,
            "decision_id": self.id,
            "reasons": [r.to_dict() for r in self.reasons],
            "policy_version": self.policy_version,
        }
        if self.approval_id is not None:
            body["approval_id"] = self.approval_id
        if self.code is not None:
            body["code"] = self.code
        return body


@dataclass(frozen=True, slots=True)
class Approval:
    """A human's yes/no bound to one task, action, resource and argument digest."""

    id: str
    task_id: str
    action: str
    resource: str
    args_digest: str
    state: ApprovalState
    reason: str
    created_at: float
    expires_at: float
    decided_by: str | None = None
    decided_at: float | None = None


def new_id(prefix: str) -> str:
    """A fresh random identifier, ``<prefix>_<128 bits, url-safe>`` (tasks, leases, decisions)."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """One action an enforcement point asks the broker about, within a task."""

    action: str
    resource: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    method: str = ""
    path: str = ""
    trace_id: str | None = None
    #: The enforcement point's resource URI (RFC 8707) when it is an OAuth protected
    #: resource; the token must be minted for it. Set only by enforcement points.
    audience: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """What a connector minted for one allowed action.

    ``for_agent`` may be returned to the agent (a short-lived access token, a database
    login); ``for_enforcer`` only ever reaches an enforcement point (an upstream secret
    to inject) and is never serialized towards the agent or the audit log.
    """

    lease_id: str
    # Secret material never goes through repr: a logged result must not leak it.
    for_agent: Mapping[str, Any] | None = field(default=None, repr=False)
    for_enforcer: Mapping[str, Any] | None = field(default=None, repr=False)

"""The connector seam: mint a real credential for a lease, revoke it, report health.

A connector is the only code that talks to the system a credential is for. Its
contract, which the lease machinery relies on for crash safety:

* ``plan`` is pure: it names the non-secret handles (a role name) before anything real
  exists, so they are in the lease row first.
* ``mint`` is all or nothing on the real system, or leaves only what ``revoke`` removes.
* ``revoke`` is idempotent: revoking twice, or revoking what was never minted, succeeds.
* Secret material goes into ``Minted.for_agent``/``for_enforcer`` only — never into
  ``material`` (stored) nor into an exception message (logged and audited).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tether.catalog import Resource
from tether.credentials.leases import Lease
from tether.model import Task


@dataclass(frozen=True, slots=True)
class MintRequest:
    lease: Lease
    task: Task
    resource: Resource
    actions: tuple[str, ...]  # the actions this credential is for (one, or the task's grants)


@dataclass(frozen=True, slots=True)
class Minted:
    for_agent: Mapping[str, Any] | None
    for_enforcer: Mapping[str, Any] | None = None
    material: Mapping[str, Any] = field(default_factory=dict)  # non-secret, stored in the lease


class Connector(Protocol):
    #: The name catalog entries use in ``connector:``.
    name: str
    #: True when revoking touches no external system (the feed is the revocation), so the
    #: lease can be marked revoked inside the transaction that ends its task.
    offline_revoke: bool

    def plan(self, resource: Resource, lease_id: str) -> dict[str, Any]:
        """Non-secret handles known before minting (stored in the pending lease)."""
        ...

    def mint(self, req: MintRequest) -> Minted:
        """Create the credential; raise ``TetherError`` (``Unavailable`` when down)."""
        ...

    def revoke(self, lease: Lease) -> None:
        """Make the credential unusable at its system; idempotent; raise on failure."""
        ...

    def health(self) -> None:
        """Raise ``Unavailable`` when the connector cannot mint right now."""
        ...

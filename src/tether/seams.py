"""The protocols at the broker's seams: what one part needs of another, and nothing more.

* :class:`Store` — store access: transactions and reads on one database. The broker's
  use cases, introspection and the enforcement-point use cases are typed against it;
  ``tether.store.db.Database`` is the implementation.
* :class:`CredentialIssuer` — credential issuance: what the broker calls inside its own
  transactions on an allow and when tasks end (``Broker.attach_credentials``);
  ``tether.credentials.service.Credentials`` is the implementation.
* :class:`BrokerParts` — what the enforcement-point use cases (``gateway.service``) and
  introspection need of a running broker; ``tether.runtime.Core`` provides it, so they
  never see the whole runtime (nor import the composition root).
* The authorizer seam of enforcement points is ``tether.gateway.authorizer.Authorizer``
  (in the broker's process, or remote over the enforcer API). It lives at the edge next
  to its two implementations, because this module sits below the edge.

Consumers are typed against these protocols, so mypy checks each seam where the runtime
is composed, and a test double or a second implementation only provides these members.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Connection

if TYPE_CHECKING:
    from tether.audit.chain import AuditChain, Unit
    from tether.broker import Broker
    from tether.catalog import Catalog, Resource
    from tether.config import Settings
    from tether.identity.keys import KeyRing
    from tether.model import AuthorizeRequest, Decision, IssuedCredential, Task, TaskState
    from tether.policy.engine import PolicyEngine

__all__ = ["BrokerParts", "CredentialIssuer", "Store"]


class Store(Protocol):
    """Store access: a write transaction or a read connection on the broker's database."""

    #: ``"sqlite"`` or ``"postgresql"``: a few statements differ (row locks, upserts).
    dialect: str
    #: The budget of one use of the store in seconds (``None``: unbounded); batch sizes adapt to it.
    timeout: float | None

    def begin(self) -> AbstractContextManager[Connection]:
        """A read-write transaction; commits on success, rolls back on any error."""
        ...

    def read(self) -> AbstractContextManager[Connection]:
        """A read-only connection."""
        ...


class CredentialIssuer(Protocol):
    """Credential issuance, called by the broker inside its own transactions."""

    def on_allow(
        self, u: Unit, task: Task, resource: Resource, req: AuthorizeRequest, decision: Decision
    ) -> IssuedCredential | None:
        """Mint the credential of an allowed action (raising denies it and rolls back)."""
        ...

    def on_tasks_ended(self, u: Unit, tasks: Sequence[Task], state: TaskState) -> None:
        """Revoke the leases of tasks that just ended, in the same transaction."""
        ...


class BrokerParts(Protocol):
    """What enforcement-point use cases and introspection use of a running broker."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Store: ...
    @property
    def audit(self) -> AuditChain: ...
    @property
    def engine(self) -> PolicyEngine: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def keys(self) -> KeyRing: ...
    @property
    def broker(self) -> Broker: ...

"""Minting and revoking leases: the broker hooks of the credentials layer.

``on_allow`` runs inside the authorize transaction (under the broker's savepoint):

1. lock the task row (``SELECT … FOR UPDATE``) and re-check it is active — a revoke
   that committed first makes this a deny; one that commits later waits for us and then
   sees (and revokes) the lease we wrote: issuing and revoking cannot interleave;
2. on PostgreSQL, write the lease ``pending`` in its own, committed transaction, so it
   is durable before the real system is touched;
3. mint through the connector;
4. on PostgreSQL mark the lease active (unless the reaper took the pending row meanwhile);
   on SQLite write it, active, now — a second writer would wait on the authorize
   transaction's lock for ever, so a pending row could only ever commit together with the
   authorization: written before the mint it was invisible to every other connection
   until the commit all the same, and one INSERT does what INSERT + UPDATE did. A crash
   before the commit leaves no row either way; the role sweep (roles are tagged and named
   after their lease, and in-flight mints are excluded) covers what the connector made;
5. emit ``credential.minted`` in the same transaction as the decision. Either way the
   lease row and its event commit before the credential is returned.

``on_tasks_ended`` runs inside the transaction that ends tasks: it publishes the dead
tasks and their leases on the revocation feed and starts revoking every lease. Once that
transaction has committed (the task events reach :meth:`Credentials.task_event`), the
external credentials go to the :class:`~tether.credentials.cut.Cutter`: cut first, then
the reaper's claimed cleanup, woken only then (``credentials.wiring``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import update

from tether import actions as act
from tether.audit import event as ev
from tether.audit.chain import AuditChain, Unit
from tether.catalog import Catalog, Resource
from tether.config import Settings
from tether.credentials import failpoints
from tether.credentials import leases as ls
from tether.credentials import revocation as rv
from tether.credentials.connectors.base import Connector, MintRequest
from tether.credentials.cut import Cutter
from tether.credentials.leases import Lease, LeaseState, Revocation
from tether.errors import Conflict, NotFound, TetherError, Unavailable
from tether.model import AuthorizeRequest, Decision, IssuedCredential, Task, TaskState, new_id
from tether.store import credentials_tables as ct
from tether.store import raw
from tether.store.db import Database

log = logging.getLogger("tether.credentials")

INFLIGHT_TTL = 120.0  # a mint whose transaction never committed is forgotten after this
PENDING_CUT_TTL = 60.0  # cuts of a transaction that never committed are forgotten after this


def lease_fields(lease: Lease) -> dict[str, Any]:
    return {
        "task_id": lease.task_id,
        "root_task_id": lease.root_task_id,
        "agent": lease.agent,
        "lease_id": lease.id,
    }


def ended_field(ended: Mapping[str, float], lease: Lease) -> dict[str, float]:
    """``task_ended_at`` for a ``credential.revoked`` payload, when the task's end is known."""
    at = ended.get(lease.task_id)
    return {} if at is None else {"task_ended_at": at}


# Locks the task row (PostgreSQL) so an issue and a revoke of one task cannot interleave;
# built once because it runs on every minting allow.
# The task row, locked until the minting transaction ends, so a close cannot commit between
# this check and the lease insert (SQLite: the writer's BEGIN IMMEDIATE already excludes it).
_LOCK_TASK_RAW = raw.Statement(
    sqlite="SELECT state, expires_at FROM tasks WHERE id = :tid",
    postgresql="SELECT state, expires_at FROM tasks WHERE id = %(tid)s FOR UPDATE",
)


class Credentials:
    """Everything the credentials layer keeps at run time (``Runtime.credentials``)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        audit: AuditChain,
        connectors: Mapping[str, Connector],
        feed: rv.Feed,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.connectors = dict(connectors)
        self.feed = feed
        self.clock = clock
        self.node_id = settings.node_id
        self._inflight: dict[str, float] = {}  # lease id → started; minted, not yet committed
        self._inflight_lock = threading.Lock()
        self.counters: dict[str, int] = {
            "minted": 0,
            "mint_failed": 0,
            "revoked": 0,
            "revoke_failed": 0,
            "irrevocable": 0,
        }
        self.wake: Callable[[], None] = lambda: None  # set by the reaper
        self.cutter = Cutter(self.connectors)
        # task id → (external leases to cut once the ending transaction commits, when queued)
        self._pending_cut: dict[str, tuple[list[Lease], float]] = {}
        self.catalog: Catalog | None = None  # set by the wiring; resolves grants of a service

    # -- minting -------------------------------------------------------------------------
    def _grants(self, task: Task, resource: Resource, req: AuthorizeRequest) -> list[tuple[str, str]]:
        """(action, resource) pairs the credential is for: the request's, or — for an explicit
        `credential:issue` on a service — every grant the task holds inside that service."""
        if req.action != act.CREDENTIAL_ISSUE:
            return [(req.action, resource.id)]
        found = []
        for g in task.scope:
            target = self.catalog.get(g.resource) if self.catalog is not None else None
            if g.action != act.CREDENTIAL_ISSUE and target is not None and target.service == resource.service:
                found.append((g.action, g.resource))
        return sorted(set(found)) or [(act.CREDENTIAL_ISSUE, resource.id)]

    def _lock_task(self, u: Unit, task: Task, now: float) -> None:
        row = raw.first(u.conn, _LOCK_TASK_RAW, {"tid": task.id})
        if row is None or row["state"] != TaskState.ACTIVE.value or row["expires_at"] <= now:
            raise Conflict(f"task `{task.id}` is no longer active", code="task_not_active")

    def inflight_leases(self) -> set[str]:
        cutoff = time.monotonic() - INFLIGHT_TTL
        with self._inflight_lock:
            for k in [k for k, v in self._inflight.items() if v < cutoff]:
                del self._inflight[k]
            return set(self._inflight)

    def settled(self, lease_id: str) -> None:
        with self._inflight_lock:
            self._inflight.pop(lease_id, None)

    def on_allow(
        self, u: Unit, task: Task, resource: Resource, req: AuthorizeRequest, decision: Decision
    ) -> IssuedCredential | None:
        if resource.connector is None:
            return None
        connector = self.connectors.get(resource.connector)
        if connector is None:
            raise Unavailable(
                f"connector `{resource.connector}` of `{resource.service}` is not available on this broker",
                code="connector_not_configured",
            )
        now = self.clock()
        self._lock_task(u, task, now)
        lease_id = new_id("lse")
        grants = self._grants(task, resource, req)
        acts = tuple(sorted({a for a, _ in grants}))
        lease = Lease(
            id=lease_id,
            task_id=task.id,
            root_task_id=task.root_id,
            agent=task.agent,
            connector=connector.name,
            audience=resource.service,
            resource=resource.id,
            scope=" ".join(f"{a}@{r}" for a, r in grants),
            issued_at=now,
            expires_at=min(task.expires_at, now + self.settings.credentials.default_ttl_seconds),
            state=LeaseState.PENDING,
            revocation=Revocation.NONE,
            node_id=self.node_id,
            material=connector.plan(resource, lease_id),
        )
        durable = self.db.dialect == "postgresql"
        if durable:
            with self.db.begin() as conn:
                ls.insert_lease(conn, lease)
        with self._inflight_lock:
            self._inflight[lease_id] = time.monotonic()
        failpoints.hit("lease.after_pending")
        try:
            minted = connector.mint(MintRequest(lease, task, resource, acts))
        except Exception as exc:
            self.counters["mint_failed"] += 1
            self.settled(lease_id)
            if durable:  # let the reaper make sure nothing is left at the real system
                with self.db.begin() as conn:
                    ls.begin_revocation(conn, [lease_id], "mint_failed", now)
                self.wake()
            if isinstance(exc, TetherError):
                raise
            log.exception("connector %s failed to mint", connector.name)
            raise Unavailable(
                f"connector `{connector.name}` failed; the action is denied", code="connector_failed"
            ) from exc
        failpoints.hit("lease.after_mint")
        material = {**lease.material, **minted.material}
        if not durable:
            # SQLite: the row is written once, active, in the authorize transaction (step 4).
            ls.insert_lease(u.conn, replace(lease, state=LeaseState.ACTIVE, material=material))
        elif not ls.activate(u.conn, lease_id, material):
            # Revoked while we minted (the reaper took a durable pending row): do not hand it out.
            raise Conflict("the credential was revoked while it was issued", code="lease_revoked")
        u.emit(
            ev.CREDENTIAL_MINTED,
            {
                "connector": connector.name,
                "audience": lease.audience,
                "resource": lease.resource,
                "scope": lease.scope,
                "expires_at": lease.expires_at,
                "material": material,
                "kind": (minted.for_agent or {}).get("kind", connector.name),
            },
            **lease_fields(lease),
        )
        self.counters["minted"] += 1
        return IssuedCredential(lease_id, minted.for_agent, minted.for_enforcer)

    # -- revocation ----------------------------------------------------------------------
    def start_revocations(
        self,
        u: Unit,
        leases: Sequence[Lease],
        reason: str,
        *,
        by: str,
        feed: bool = True,
        ended_at: Mapping[str, float] | None = None,
    ) -> list[Lease]:
        """Mark leases revoking; finish offline ones now (same transaction, with events).

        Only the leases this call moved count (another replica may have moved some first);
        returns the external ones among them, for the caller to cut and then wake the
        reaper (:attr:`wake`) once the transaction has committed — never from inside it
        (see ``credentials.reaper``: a claim taken before this process dies would hold the
        lease until the claim is seen to be dead).
        ``ended_at`` (task id → end time) is given by the caller that ended the tasks; for
        any other task-end reason it is read from the tasks, so that each
        ``credential.revoked`` of a task's end carries ``task_ended_at`` (the revocation lag
        is measured from it by whichever process revokes: ``tether.metrics``)."""
        now = self.clock()
        moved = ls.begin_revocation(u.conn, [x.id for x in leases], reason, now)
        leases = [x for x in leases if x.id in moved]
        if feed and leases:
            rv.append(
                u.conn,
                [rv.FeedEntry("lease", x.task_id, reason, x.expires_at, x.id, x.audience) for x in leases],
                now,
                source=self.node_id,
            )
        offline = [x for x in leases if getattr(self.connectors.get(x.connector), "offline_revoke", False)]
        if ended_at is None and offline and ls.is_task_end(reason):
            ended_at = ls.task_end_times(u.conn, [x.task_id for x in offline])
        ended = ended_at or {}
        external: list[Lease] = []
        for lease in leases:
            connector = self.connectors.get(lease.connector)
            if connector is not None and connector.offline_revoke:
                connector.revoke(lease)
                if ls.mark_revoked(u.conn, lease.id, now):
                    self.counters["revoked"] += 1
                    u.emit(
                        ev.CREDENTIAL_REVOKED,
                        {
                            "connector": lease.connector,
                            "reason": reason,
                            "by": by,
                            "audience": lease.audience,
                            **ended_field(ended, lease),
                        },
                        **lease_fields(lease),
                    )
            else:
                external.append(lease)
        return external

    def on_tasks_ended(self, u: Unit, tasks: Sequence[Task], state: TaskState) -> None:
        if not tasks:
            return
        now = self.clock()
        rv.append(
            u.conn,
            [rv.FeedEntry("task", x.id, state.value, x.expires_at) for x in tasks],
            now,
            source=self.node_id,
        )
        live = ls.live_leases_of_tasks(u.conn, [x.id for x in tasks])
        ended_at = {x.id: now for x in tasks}
        external = self.start_revocations(u, live, f"task_{state.value}", by="broker", ended_at=ended_at)
        if external:
            by_task: dict[str, list[Lease]] = {}
            for x in external:
                by_task.setdefault(x.task_id, []).append(x)
            queued = time.monotonic()
            with self._inflight_lock:
                for k in [k for k, (_, at) in self._pending_cut.items() if queued - at > PENDING_CUT_TTL]:
                    del self._pending_cut[k]
                for task_id, xs in by_task.items():
                    self._pending_cut[task_id] = (xs, queued)

    def task_event(self, task_id: str) -> None:
        """A task's end committed: cut its external credentials now (called after commit)."""
        failpoints.hit("task.ended_before_cut")  # the replica tests: a crash mid-close
        with self._inflight_lock:
            pending = self._pending_cut.pop(task_id, None)
        if pending is not None:
            self.cutter.submit(pending[0])

    def revoke_lease(self, lease_id: str, *, by: str, reason: str = "revoked") -> Lease:
        """Revoke one lease now (operator, RFC 7009). An irrevocable one is tried again."""
        cut: list[Lease] = []
        retry = False
        with self.audit.unit() as u:
            lease = ls.get_lease(u.conn, lease_id)
            if lease is None:
                raise NotFound(f"no lease `{lease_id}`", code="lease_not_found")
            if lease.state is LeaseState.IRREVOCABLE:
                u.conn.execute(
                    update(ct.leases)
                    .where(ct.leases.c.id == lease_id)
                    .values(
                        state=LeaseState.REVOKING.value,
                        revocation=Revocation.PENDING.value,
                        next_attempt_at=self.clock(),
                        claimed_by=None,
                    )
                )
                retry = True
            elif lease.state in ls.LIVE:
                cut = self.start_revocations(u, [lease], reason, by=by)
            found = ls.get_lease(u.conn, lease_id)
        self.cutter.submit(cut)
        if cut or retry:
            self.wake()  # committed: the reaper's claim sees the lease due
        assert found is not None
        return found

    def metrics(self) -> dict[str, Any]:
        with self.db.read() as conn:
            states = ls.count_by_state(conn)
        return {
            "counters": {**self.counters, "cut": self.cutter.cuts, "cut_failed": self.cutter.failures},
            "leases": states,
        }

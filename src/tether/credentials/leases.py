"""Leases: every credential Tether mints, as a row in the store.

State machine (``state`` / ``revocation``)::

    pending/none ──mint ok──▶ active/none ──task ends, expiry, revoke──▶ revoking/pending
         │                                                                 │  connector.revoke
         └──mint failed or crashed──▶ revoking/pending                     ▼
                                                   revoked/done  or  revoking/retrying ──▶ irrevocable

A lease is written ``pending`` before the connector touches the real system, so a crash
at any point leaves a row the reaper finds. Every transition is a compare-and-set on the
state (and, for a failed attempt, on the revoker's claim ``claimed_by``), so replicas
racing on one lease make exactly one transition between them. Functions take the caller's connection so
the lease change and its audit event commit in one transaction.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, and_, or_, select, update

from tether.store import credentials_tables as ct
from tether.store import raw
from tether.store import tables as t


class LeaseState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKING = "revoking"
    REVOKED = "revoked"
    IRREVOCABLE = "irrevocable"


class Revocation(enum.StrEnum):
    NONE = "none"
    PENDING = "pending"
    RETRYING = "retrying"
    DONE = "done"
    IRREVOCABLE = "irrevocable"


#: States in which the credential may still work somewhere.
LIVE = (LeaseState.PENDING, LeaseState.ACTIVE)


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    task_id: str
    root_task_id: str
    agent: str
    connector: str
    audience: str  # one service id
    resource: str
    scope: str  # `action@resource`, space separated
    issued_at: float
    expires_at: float
    state: LeaseState
    revocation: Revocation
    node_id: str
    material: dict[str, Any] = field(default_factory=dict)  # non-secret handles only
    attempts: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None
    revoke_reason: str | None = None
    revoked_at: float | None = None

    def view(self) -> dict[str, Any]:
        """What operators and the API may see (``material`` holds no secret by contract)."""
        return {
            "lease_id": self.id,
            "task_id": self.task_id,
            "root_task_id": self.root_task_id,
            "agent": self.agent,
            "connector": self.connector,
            "audience": self.audience,
            "resource": self.resource,
            "scope": self.scope,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "state": self.state.value,
            "revocation": self.revocation.value,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "revoke_reason": self.revoke_reason,
            "revoked_at": self.revoked_at,
            "node_id": self.node_id,
            "material": dict(self.material),
        }


def _lease(row: Row[Any]) -> Lease:
    m = row._mapping
    return Lease(
        id=m["id"],
        task_id=m["task_id"],
        root_task_id=m["root_task_id"],
        agent=m["agent"],
        connector=m["connector"],
        audience=m["audience"],
        resource=m["resource"],
        scope=m["scope"],
        issued_at=m["issued_at"],
        expires_at=m["expires_at"],
        state=LeaseState(m["state"]),
        revocation=Revocation(m["revocation"]),
        node_id=m["node_id"],
        material=json.loads(m["material"]),
        attempts=m["attempts"] or 0,
        next_attempt_at=m["next_attempt_at"],
        last_error=m["last_error"],
        revoke_reason=m["revoke_reason"],
        revoked_at=m["revoked_at"],
    )


# Both run on every minted credential, on the authorize hot path: raw driver statements
# (``tether.store.raw``), since SQLAlchemy's per-statement work costs more than the write.
_INSERT_LEASE_RAW = raw.statement(
    "INSERT INTO credential_leases (id, task_id, root_task_id, agent, connector, audience, resource, "
    "scope, issued_at, expires_at, state, revocation, node_id, material, attempts) VALUES (:id, "
    ":task_id, :root_task_id, :agent, :connector, :audience, :resource, :scope, :issued_at, "
    ":expires_at, :state, :revocation, :node_id, :material, 0)"
)
_ACTIVATE_RAW = raw.statement(
    "UPDATE credential_leases SET state = 'active', material = :mat WHERE id = :lid AND state = 'pending'"
)


def insert_lease(conn: Connection, lease: Lease) -> None:
    raw.execute(
        conn,
        _INSERT_LEASE_RAW,
        {
            "id": lease.id,
            "task_id": lease.task_id,
            "root_task_id": lease.root_task_id,
            "agent": lease.agent,
            "connector": lease.connector,
            "audience": lease.audience,
            "resource": lease.resource,
            "scope": lease.scope,
            "issued_at": lease.issued_at,
            "expires_at": lease.expires_at,
            "state": lease.state.value,
            "revocation": lease.revocation.value,
            "node_id": lease.node_id,
            "material": json.dumps(lease.material, sort_keys=True),
        },
    ).close()


def get_lease(conn: Connection, lease_id: str) -> Lease | None:
    row = conn.execute(select(ct.leases).where(ct.leases.c.id == lease_id)).first()
    return _lease(row) if row else None


def activate(conn: Connection, lease_id: str, material: dict[str, Any]) -> bool:
    return (
        raw.rowcount(conn, _ACTIVATE_RAW, {"lid": lease_id, "mat": json.dumps(material, sort_keys=True)}) == 1
    )


def begin_revocation(conn: Connection, lease_ids: Sequence[str], reason: str, now: float) -> set[str]:
    """Move live leases to ``revoking`` (compare-and-set on the state); the revoker
    finishes them. Returns the ids this call moved: a lease another replica moved first
    is not in it, so only one of them feeds, audits and cuts it."""
    if not lease_ids:
        return set()
    res = conn.execute(
        update(ct.leases)
        .where(and_(ct.leases.c.id.in_(lease_ids), ct.leases.c.state.in_([s.value for s in LIVE])))
        .values(
            state=LeaseState.REVOKING.value,
            revocation=Revocation.PENDING.value,
            revoke_reason=reason,
            next_attempt_at=now,
            claimed_by=None,
        )
        .returning(ct.leases.c.id)
    )
    return {str(r[0]) for r in res}


def claim_due(
    conn: Connection, now: float, token: str, *, visibility: float, limit: int = 100
) -> list[Lease]:
    """Claim up to ``limit`` due revocations for one worker (``token``) until ``now +
    visibility``; run it in a write transaction.

    On PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED``, so replicas claiming at
    the same moment take disjoint batches without waiting on each other; SQLite has a
    single writer (``BEGIN IMMEDIATE``). The update is a compare-and-set on both: only
    the rows it changed carry ``token``, and only those are returned. A worker that dies
    gives its claims back when the visibility timeout passes."""
    due = and_(
        ct.leases.c.state == LeaseState.REVOKING.value,
        or_(ct.leases.c.next_attempt_at.is_(None), ct.leases.c.next_attempt_at <= now),
    )
    ids = [
        str(r[0])
        for r in conn.execute(
            select(ct.leases.c.id)
            .where(due)
            .order_by(ct.leases.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ]
    if not ids:
        return []
    conn.execute(
        update(ct.leases)
        .where(and_(ct.leases.c.id.in_(ids), due))
        .values(claimed_by=token, next_attempt_at=now + visibility)
    )
    rows = conn.execute(
        select(ct.leases).where(and_(ct.leases.c.id.in_(ids), ct.leases.c.claimed_by == token))
    )
    return [_lease(r) for r in rows]


def claims_in_flight(conn: Connection, now: float) -> set[str]:
    """The claim tokens of revocations being worked now (claimed, visibility not out)."""
    rows = conn.execute(
        select(ct.leases.c.claimed_by)
        .where(
            and_(
                ct.leases.c.state == LeaseState.REVOKING.value,
                ct.leases.c.claimed_by.is_not(None),
                ct.leases.c.next_attempt_at > now,
            )
        )
        .distinct()
    )
    return {str(r[0]) for r in rows}


def release_claims(conn: Connection, tokens: Iterable[str], now: float) -> list[str]:
    """Make the leases claimed by ``tokens`` due now (their revokers are gone); a
    compare-and-set on each token, so a lease finished or re-claimed meanwhile is left
    alone. Returns the lease ids released."""
    tokens = sorted(set(tokens))
    if not tokens:
        return []
    res = conn.execute(
        update(ct.leases)
        .where(and_(ct.leases.c.state == LeaseState.REVOKING.value, ct.leases.c.claimed_by.in_(tokens)))
        .values(claimed_by=None, next_attempt_at=now)
        .returning(ct.leases.c.id)
    )
    return sorted(str(r[0]) for r in res)


def mark_revoked(conn: Connection, lease_id: str, now: float) -> bool:
    res = conn.execute(
        update(ct.leases)
        .where(and_(ct.leases.c.id == lease_id, ct.leases.c.state == LeaseState.REVOKING.value))
        .values(
            state=LeaseState.REVOKED.value,
            revocation=Revocation.DONE.value,
            revoked_at=now,
            next_attempt_at=None,
            last_error=None,
        )
    )
    return res.rowcount == 1


def mark_failed(
    conn: Connection,
    lease_id: str,
    *,
    attempts: int,
    error: str,
    next_attempt_at: float | None,
    irrevocable: bool,
    claim: str | None = None,
) -> bool:
    """Record a failed attempt; with ``claim``, only while that claim still holds the lease
    (a lease another worker revoked or re-claimed meanwhile is left alone: returns False)."""
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_error": error[:512],
        "next_attempt_at": next_attempt_at,
        # Backing off is nobody's work: a claim left set means a revoker at work
        # (``claims_in_flight``).
        "claimed_by": None,
    }
    if irrevocable:
        values.update(state=LeaseState.IRREVOCABLE.value, revocation=Revocation.IRREVOCABLE.value)
    else:
        values.update(revocation=Revocation.RETRYING.value)
    cond = and_(ct.leases.c.id == lease_id, ct.leases.c.state == LeaseState.REVOKING.value)
    if claim is not None:
        cond = and_(cond, ct.leases.c.claimed_by == claim)
    res = conn.execute(update(ct.leases).where(cond).values(**values))
    return res.rowcount == 1


def live_leases_of_tasks(conn: Connection, task_ids: Iterable[str]) -> list[Lease]:
    ids = list(task_ids)
    if not ids:
        return []
    rows = conn.execute(
        select(ct.leases).where(
            and_(ct.leases.c.task_id.in_(ids), ct.leases.c.state.in_([s.value for s in LIVE]))
        )
    )
    return [_lease(r) for r in rows]


def is_task_end(reason: str | None) -> bool:
    """Whether a revocation reason is a task's end (``task_closed``…, or ``task_ended`` when
    the reaper finds a live lease of an ended task)."""
    return bool(reason) and str(reason).startswith("task_")


def task_end_times(conn: Connection, task_ids: Iterable[str]) -> dict[str, float]:
    """When each ended task ended (``tasks.closed_at``): the start of its leases'
    revocation lag, read by whichever process finishes the revocation."""
    ids = sorted(set(task_ids))
    if not ids:
        return {}
    c = t.tasks.c
    rows = conn.execute(select(c.id, c.closed_at).where(c.id.in_(ids), c.closed_at.is_not(None)))
    return {str(r[0]): float(r[1]) for r in rows}


def expired_live(conn: Connection, now: float, limit: int = 500) -> list[Lease]:
    rows = conn.execute(
        select(ct.leases)
        .where(and_(ct.leases.c.state == LeaseState.ACTIVE.value, ct.leases.c.expires_at <= now))
        .limit(limit)
    )
    return [_lease(r) for r in rows]


def stale_pending(
    conn: Connection, *, node_id: str | None, older_than: float, limit: int = 500
) -> list[Lease]:
    """Pending leases whose mint cannot still be running: this node's (``node_id``, given
    only at start, when nothing of ours is in flight) or any older than ``older_than``."""
    cond = ct.leases.c.issued_at <= older_than
    if node_id is not None:
        cond = or_(cond, ct.leases.c.node_id == node_id)
    rows = conn.execute(
        select(ct.leases).where(and_(ct.leases.c.state == LeaseState.PENDING.value, cond)).limit(limit)
    )
    return [_lease(r) for r in rows]


def live_of_ended_tasks(conn: Connection, limit: int = 500) -> list[Lease]:
    """Live leases whose task is no longer active (a safety net behind the task-end hook)."""
    from tether.store import tables as t  # local: keep the table import next to its only use

    rows = conn.execute(
        select(ct.leases)
        .join(t.tasks, t.tasks.c.id == ct.leases.c.task_id)
        .where(and_(ct.leases.c.state == LeaseState.ACTIVE.value, t.tasks.c.state != "active"))
        .limit(limit)
    )
    return [_lease(r) for r in rows]


def unrevoked_role_names(conn: Connection, connector: str) -> set[str]:
    """``material.role`` of every lease whose role is still accounted for: live, being
    revoked (a claimed revoker owns it), or irrevocable (an operator owns it)."""
    rows = conn.execute(
        select(ct.leases.c.material).where(
            and_(ct.leases.c.connector == connector, ct.leases.c.state != LeaseState.REVOKED.value)
        )
    )
    return {r for (m,) in rows if isinstance(r := json.loads(m).get("role"), str)}


def live_role_names(conn: Connection, connector: str) -> set[str]:
    """``material.role`` of every lease that may still need its role (not yet revoked)."""
    rows = conn.execute(
        select(ct.leases.c.material).where(
            and_(
                ct.leases.c.connector == connector,
                ct.leases.c.state.in_([LeaseState.PENDING.value, LeaseState.ACTIVE.value]),
            )
        )
    )
    out: set[str] = set()
    for (material,) in rows:
        role = json.loads(material).get("role")
        if isinstance(role, str):
            out.add(role)
    return out


def list_leases(
    conn: Connection,
    *,
    state: str | None = None,
    task_id: str | None = None,
    irrevocable: bool = False,
    limit: int = 200,
) -> list[Lease]:
    q = select(ct.leases).order_by(ct.leases.c.issued_at.desc()).limit(limit)
    if irrevocable:
        q = q.where(ct.leases.c.state == LeaseState.IRREVOCABLE.value)
    elif state:
        q = q.where(ct.leases.c.state == state)
    if task_id:
        q = q.where(ct.leases.c.task_id == task_id)
    return [_lease(r) for r in conn.execute(q)]


def count_by_state(conn: Connection) -> dict[str, int]:
    from sqlalchemy import func

    rows = conn.execute(select(ct.leases.c.state, func.count()).group_by(ct.leases.c.state))
    return {str(s): int(n) for s, n in rows}

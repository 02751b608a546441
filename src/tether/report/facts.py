"""Facts: everything a report reads, gathered at the edge in one consistent snapshot.

Read-only: the store is read through one snapshot connection (the audit walk and the
window's queries see the same state), the policy directory and the catalog are read
from disk. Nothing here writes, so a report can run against a live broker or a copy of
its database.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy
from sqlalchemy import Connection, func, select

from tether.audit import event as ev
from tether.audit.checkpoint import Checkpoint, stored_checkpoints
from tether.audit.event import Event
from tether.audit.verify import VerifyReport, row_to_event, verify_chains
from tether.catalog import Catalog
from tether.config import Settings
from tether.errors import InvalidRequest, PolicyError
from tether.legacy import inventory
from tether.model import Grant
from tether.policy.loader import load_bundle, load_schema
from tether.store import tables as t
from tether.store.credentials_tables import leases as lease_table
from tether.store.identity_tables import workload_entries

_E = t.audit_events.c
#: an active task this long past its expiry means the reaper is not ending tasks
OVERDUE_GRACE_SECONDS = 120.0
_CHUNK = 500
#: The window's events are held in memory while the evidence is computed (parsed, with
#: their payloads); past this many, a report refuses and asks for a narrower window.
MAX_WINDOW_EVENTS = 2_000_000


@dataclass(frozen=True, slots=True)
class Registration:
    spiffe_id: str
    selectors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TaskFact:
    id: str
    scope: tuple[Mapping[str, str], ...]
    expires_at: float
    closed_at: float | None
    state: str


@dataclass(frozen=True, slots=True)
class LeaseFact:
    id: str
    task_id: str
    audience: str
    issued_at: float
    expires_at: float
    state: str
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What the policy files on disk say, by annotation (never by file name)."""

    directory: str
    version: str | None
    files: tuple[str, ...] = ()
    by_mechanism: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # @mechanism → policy ids
    approval_ids: tuple[str, ...] = ()  # policies carrying @approval
    error: str = ""


@dataclass
class Facts:
    since: float
    until: float
    now: float
    events: list[Event]
    total_events: int
    policy_loads: list[Event]
    registrations: list[Registration]
    tasks: dict[str, TaskFact]
    overdue_tasks: list[str]
    leases: list[LeaseFact]
    verify: VerifyReport
    latest_checkpoint: Checkpoint | None
    policy: PolicyFacts
    max_ttl_seconds: int
    max_depth: int
    dpop_required: bool
    masking_rules: int
    catalog: Catalog | None = None
    secrets: list[dict[str, Any]] = field(default_factory=list)  # `tether secrets inventory` rows

    def within(self, grant: Mapping[str, Any], scope: Iterable[Mapping[str, Any]]) -> bool:
        """``grant`` no wider than some entry of ``scope`` (the broker's own rule)."""
        g = Grant(str(grant.get("action")), str(grant.get("resource")))
        parent = [Grant(str(s.get("action")), str(s.get("resource"))) for s in scope]
        if self.catalog is not None:
            return self.catalog.grant_within(g, parent)
        return g in parent


def policy_facts(policy_dir: Path) -> PolicyFacts:
    """Annotations of every policy in ``policy_dir``, and the version the broker would load."""
    directory = str(policy_dir)
    try:
        # The broker's own loader: the same validation and the same version string.
        bundle = load_bundle(policy_dir, load_schema())
        named = [(name, (policy_dir / name).read_text("utf-8")) for name in bundle.files]
    except PolicyError as exc:
        return PolicyFacts(directory, None, error=exc.message)
    except (OSError, UnicodeDecodeError) as exc:
        return PolicyFacts(directory, None, error=f"cannot read the policy files: {exc}")
    by_mech: dict[str, list[str]] = {}
    approvals: list[str] = []
    for name, text in named:
        try:
            doc = json.loads(cedarpy.policies_to_json_str(text))
        except ValueError:
            return PolicyFacts(directory, None, error=f"`{name}` does not parse as Cedar")
        for pid, pol in sorted((doc.get("staticPolicies") or {}).items()):
            notes = pol.get("annotations") or {}
            ident = str(notes.get("id") or f"{name}:{pid}")
            if "mechanism" in notes:
                by_mech.setdefault(str(notes["mechanism"]), []).append(ident)
            if "approval" in notes and pol.get("effect") == "forbid":
                approvals.append(ident)
    return PolicyFacts(
        directory,
        bundle.version if named else None,
        bundle.files,
        {k: tuple(v) for k, v in by_mech.items()},
        tuple(approvals),
    )


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def gather(
    conn: Connection,
    settings: Settings,
    *,
    since: float,
    until: float,
    now: float,
    external: Sequence[Checkpoint] = (),
    catalog: Catalog | None = None,
) -> Facts:
    """Read the facts of the window ``[since, until)`` through ``conn`` (a snapshot)."""
    total = int(conn.execute(select(func.count()).select_from(t.audit_events)).scalar() or 0)
    in_window = int(
        conn.execute(
            select(func.count()).select_from(t.audit_events).where(_E.ts >= since, _E.ts < until)
        ).scalar()
        or 0
    )
    if in_window > MAX_WINDOW_EVENTS:
        raise InvalidRequest(
            f"the window holds {in_window} audit events, more than a report reads at once "
            f"({MAX_WINDOW_EVENTS}); narrow it with `--since`/`--until` and report in parts",
            code="report_window_too_large",
        )
    rows = conn.execute(
        select(t.audit_events).where(_E.ts >= since, _E.ts < until).order_by(_E.ts, _E.chain, _E.seq)
    )
    events = [row_to_event(r._mapping) for r in rows]
    loads = [
        row_to_event(r._mapping)
        for r in conn.execute(
            select(t.audit_events)
            .where(_E.type == ev.POLICY_LOADED, _E.ts < until)
            .order_by(_E.ts, _E.chain, _E.seq)
        )
    ]
    regs = [
        Registration(r.spiffe_id, tuple(json.loads(r.selectors)))
        for r in conn.execute(select(workload_entries.c.spiffe_id, workload_entries.c.selectors))
    ]
    lc = lease_table.c
    # Every lease alive at some point of the window, also those issued before it: a lease
    # minted last month whose task ended this week is this week's problem.
    leases = [
        LeaseFact(r.id, r.task_id, r.audience, r.issued_at, r.expires_at, r.state, r.revoked_at)
        for r in conn.execute(
            select(
                lc.id, lc.task_id, lc.audience, lc.issued_at, lc.expires_at, lc.state, lc.revoked_at
            ).where(lc.issued_at < until, lc.expires_at >= since)
        )
    ]
    wanted = sorted(
        {x.task_id for x in leases}
        | {e.parent_task_id for e in events if e.type == ev.TASK_OPENED and e.parent_task_id}
    )
    tc = t.tasks.c
    tasks: dict[str, TaskFact] = {}
    for part in _chunks(wanted):
        for r in conn.execute(
            select(tc.id, tc.scope, tc.expires_at, tc.closed_at, tc.state).where(tc.id.in_(part))
        ):
            tasks[r.id] = TaskFact(r.id, tuple(json.loads(r.scope)), r.expires_at, r.closed_at, r.state)
    overdue = [
        str(r[0])
        for r in conn.execute(
            select(tc.id).where(tc.state == "active", tc.expires_at < now - OVERDUE_GRACE_SECONDS)
        )
    ]
    report = verify_chains(conn, external=external)
    cps = stored_checkpoints(conn) + list(external)
    latest = max(cps, key=lambda c: c.ts) if cps and report.ok else None
    a = settings.audit
    return Facts(
        since=since,
        until=until,
        now=now,
        events=events,
        total_events=total,
        policy_loads=loads,
        registrations=regs,
        tasks=tasks,
        overdue_tasks=overdue,
        leases=leases,
        verify=report,
        latest_checkpoint=latest,
        policy=policy_facts(settings.policy_path),
        max_ttl_seconds=settings.tasks.max_ttl_seconds,
        max_depth=settings.tasks.max_depth,
        dpop_required=settings.identity.dpop_required(settings.environment),
        masking_rules=len(a.mask_paths) + len(a.mask_headers) + len(a.mask_patterns),
        catalog=catalog,
        secrets=inventory.listing(conn, now),
    )


__all__ = ["Facts", "LeaseFact", "PolicyFacts", "Registration", "TaskFact", "gather", "policy_facts"]

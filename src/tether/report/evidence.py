"""Evidence: the numbers a report shows, computed from :class:`Facts` (no I/O here).

Every metric names where it comes from (``audit`` events in the window, the ``store``'s
current state, the ``config``, the ``policy`` files, or ``none`` when there is no data
source yet) and carries the ids (``chain:seq``) of the audit events behind it, so a
reader can follow a number back to the log with ``tether audit search``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.audit import event as ev
from tether.audit.event import Event
from tether.report.facts import Facts

#: How agents may prove themselves to Tether: none of them is a shared secret.
WORKLOAD_ATTESTATIONS = frozenset({"unix", "jwt-svid", "oidc"})
MAX_IDS = 200  # event ids kept per metric (the count is always exact)
_ENDS = (ev.TASK_CLOSED, ev.TASK_EXPIRED, ev.TASK_REVOKED)

Value = int | float | bool | str | None


@dataclass(frozen=True, slots=True)
class Spec:
    label: str
    source: str  # audit | store | config | policy | none
    unit: str = ""  # "" (a count), "s", "bool", "text"


S = Spec
EVIDENCE: dict[str, Spec] = {
    "agents.registered": S("workload registration entries", "store"),
    "agents.active": S("agents that opened tasks", "audit"),
    "agents.attestation_methods": S("ways agents proved who they are", "audit"),
    "agents.static_secret": S("tasks opened with a static secret", "audit"),
    "agents.shared_selectors": S("registrations sharing their selectors with another ID", "store"),
    "agents.removed": S("registrations removed", "audit"),
    "tasks.opened": S("tasks opened", "audit"),
    "tasks.max_ttl_configured": S("configured task TTL maximum", "config", "s"),
    "tasks.ttl_p50": S("task TTL, median", "audit", "s"),
    "tasks.ttl_max": S("task TTL, longest", "audit", "s"),
    "tasks.ttl_over_max": S("tasks longer than the maximum", "audit"),
    "tasks.ended": S("tasks ended (closed, expired, revoked)", "audit"),
    "tasks.overdue": S("active tasks past their expiry now", "store"),
    "tasks.with_delegator": S("tasks naming a human delegator", "audit"),
    "decisions.total": S("authorization decisions", "audit"),
    "decisions.allow": S("decisions: allow", "audit"),
    "decisions.deny": S("decisions: deny", "audit"),
    "decisions.approval_required": S("decisions: approval required", "audit"),
    "decisions.reasons": S("distinct decision reasons", "audit"),
    "decisions.out_of_scope": S("denied: outside the task's scope", "audit"),
    "decisions.denied_by_taint": S("denied by a taint rule", "audit"),
    "decisions.denied_by_environment": S("denied by environment isolation", "audit"),
    "credentials.issued": S("credentials issued", "audit"),
    "credentials.ttl_p50": S("credential TTL, median", "audit", "s"),
    "credentials.ttl_max": S("credential TTL, longest", "audit", "s"),
    "credentials.beyond_task": S("credentials (live in the window) expiring after their task", "store"),
    "credentials.outlived_task": S(
        "credentials (live in the window) still live after their task ended", "store"
    ),
    "credentials.unbound_audience": S("credentials (live in the window) without one audience", "store"),
    "credentials.revoked": S("credentials revoked", "audit"),
    "revocation.measured": S("revocations timed (task end → lease revoked)", "audit"),
    "revocation.latency_p50": S("revocation latency, median", "audit", "s"),
    "revocation.latency_p99": S("revocation latency, p99", "audit", "s"),
    "revocation.latency_max": S("revocation latency, longest", "audit", "s"),
    "approvals.requested": S("approvals requested", "audit"),
    "approvals.granted": S("approvals granted", "audit"),
    "approvals.rejected": S("approvals rejected", "audit"),
    "approvals.expired": S("approvals nobody answered in time", "audit"),
    "approvals.wait_p50": S("wait for a human, median", "audit", "s"),
    "approvals.wait_max": S("wait for a human, longest", "audit", "s"),
    "approvals.approvers": S("distinct approvers", "audit"),
    "delegations.offered": S("delegations offered", "audit"),
    "delegations.redeemed": S("delegated tasks opened", "audit"),
    "delegations.max_depth": S("deepest delegation", "audit"),
    "delegations.depth_limit": S("configured maximum depth", "config"),
    "delegations.widening": S("delegated tasks wider or longer than their parent", "audit"),
    "killswitch.uses": S("kill-switch uses", "audit"),
    "killswitch.tasks_revoked": S("tasks ended by the kill switch", "audit"),
    "policy.versions": S("policy versions in force during the window", "audit"),
    "policy.in_force": S("policy version in force", "audit", "text"),
    "policy.dir_in_force": S("policy files on disk are the version in force", "policy", "bool"),
    "policy.taint_rule": S('policies annotated @mechanism("taint")', "policy"),
    "policy.environment_rule": S('policies annotated @mechanism("environment-isolation")', "policy"),
    "policy.approval_rule": S("policies annotated @approval", "policy"),
    "policy.burst_rule": S('policies annotated @mechanism("call-burst")', "policy"),
    "policy.reload_failures": S("policy reloads refused", "audit"),
    "dpop.required": S("DPoP required for every task", "config", "bool"),
    "dpop.tasks_bound": S("tasks bound to a DPoP key", "audit"),
    "dpop.tasks_unbound": S("tasks not bound to a key", "audit"),
    "audit.events_in_window": S("audit events in the window", "audit"),
    "audit.chain_ok": S("audit hash chains verify (the window's events among them)", "audit", "bool"),
    "audit.events_verified": S("audit events verified", "store"),
    "audit.breaks": S("broken links", "store"),
    "audit.checkpoints_verified": S("signed checkpoints verified", "store"),
    "audit.checkpoint_latest": S("latest signed checkpoint", "store", "text"),
    "audit.masking_rules": S("audit masking rules configured", "config"),
    "gateway.calls_forwarded": S("calls forwarded by gateways", "audit"),
    "gateway.calls_without_decision": S("forwarded calls without a decision", "audit"),
    "gateway.tool_changes": S("tool definitions changed (held back)", "audit"),
    "secrets.long_lived": S("long-lived secrets remaining (in code, or unrotated > 90 days)", "store"),
}
del S


def eid(e: Event) -> str:
    return f"{e.chain}:{e.seq}"


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    value: Value
    events: tuple[str, ...] = ()
    n_events: int = 0
    detail: Any = None
    note: str = ""

    @property
    def spec(self) -> Spec:
        return EVIDENCE[self.key]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "label": self.spec.label,
            "source": self.spec.source,
            "unit": self.spec.unit,
            "value": self.value,
            "n_events": self.n_events,
            "events": list(self.events),
        }
        if self.detail is not None:
            out["detail"] = self.detail
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Evidence:
    metrics: dict[str, Metric] = field(default_factory=dict)
    #: value lists behind the charts: task and credential TTLs, revocation and approval waits
    distributions: dict[str, list[float]] = field(default_factory=dict)
    #: decisions over time: bucket start → {outcome: count}
    series: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> Value:
        m = self.metrics.get(key)
        return None if m is None else m.value

    def windowed_events(self, key: str) -> int:
        m = self.metrics.get(key)
        return m.n_events if m is not None and m.spec.source == "audit" else 0

    def put(self, key: str, value: Value, events: Iterable[Event] = (), **kw: Any) -> None:
        if key not in EVIDENCE:
            raise KeyError(key)  # a programming error: every key is declared above
        behind = events if isinstance(events, list | tuple) else list(events)
        ids = tuple(eid(e) for e in behind[:MAX_IDS])
        self.metrics[key] = Metric(key, value, ids, len(behind), **kw)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def compute(f: Facts) -> Evidence:
    """Every metric of :data:`EVIDENCE` from ``f``."""
    out = Evidence()
    by_type: dict[str, list[Event]] = defaultdict(list)
    for e in f.events:
        by_type[e.type].append(e)
    _agents(out, f, by_type)
    _tasks(out, f, by_type)
    _decisions(out, f, by_type)
    _credentials(out, f, by_type)
    _approvals(out, by_type)
    _delegations(out, f, by_type)
    _policy(out, f, by_type)
    _audit(out, f, by_type)
    _secrets(out, f)
    return out


LONG_LIVED_DAYS = 90


def _secrets(out: Evidence, f: Facts) -> None:
    """Secrets the broker holds that still appear in code or have kept one value too long."""
    bad = sorted(
        r["name"] for r in f.secrets if r["exposures_live"] > 0 or r["value_age_days"] > LONG_LIVED_DAYS
    )
    out.put("secrets.long_lived", len(bad), detail=bad)


def _agents(out: Evidence, f: Facts, t: Mapping[str, list[Event]]) -> None:
    opened = t[ev.TASK_OPENED]
    regs = t[ev.WORKLOAD_REGISTERED]
    out.put(
        "agents.registered", len(f.registrations), regs, detail=sorted(r.spiffe_id for r in f.registrations)
    )
    agents = sorted({e.agent for e in opened if e.agent})
    out.put("agents.active", len(agents), opened, detail=agents)
    methods: dict[str, set[str]] = defaultdict(set)
    for e in opened:
        methods[str(e.payload.get("attestation") or "unknown")].add(e.agent or "")
    out.put(
        "agents.attestation_methods",
        len(methods),
        opened,
        detail={m: sorted(a) for m, a in sorted(methods.items())},
    )
    static = [e for e in opened if e.payload.get("attestation") not in WORKLOAD_ATTESTATIONS]
    out.put("agents.static_secret", len(static), static or opened)
    by_selectors: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for r in f.registrations:
        by_selectors[tuple(sorted(r.selectors))].add(r.spiffe_id)
    shared = sorted(sid for ids in by_selectors.values() if len(ids) > 1 for sid in ids)
    out.put("agents.shared_selectors", len(shared), detail=shared)
    out.put("agents.removed", len(t[ev.WORKLOAD_REMOVED]), t[ev.WORKLOAD_REMOVED])


def _tasks(out: Evidence, f: Facts, t: Mapping[str, list[Event]]) -> None:
    opened = t[ev.TASK_OPENED]
    ttls = [float(e.payload.get("expires_at", e.ts)) - e.ts for e in opened]
    out.distributions["task_ttl"] = [round(x, 3) for x in ttls]
    out.put("tasks.opened", len(opened), opened)
    out.put("tasks.max_ttl_configured", f.max_ttl_seconds)
    out.put("tasks.ttl_p50", _rounded(percentile(ttls, 50)), opened)
    out.put("tasks.ttl_max", _rounded(max(ttls, default=None)), opened)
    over = [e for e, ttl in zip(opened, ttls, strict=True) if ttl > f.max_ttl_seconds + 1]
    out.put("tasks.ttl_over_max", len(over), over or opened)
    ended = [e for ty in _ENDS for e in t[ty]]
    out.put("tasks.ended", len(ended), ended, detail=dict(Counter(e.type for e in ended)))
    out.put("tasks.overdue", len(f.overdue_tasks), detail=list(f.overdue_tasks))
    named = [e for e in opened if e.payload.get("delegator") or e.delegator]
    out.put("tasks.with_delegator", len(named), named)
    bound = [e for e in opened if e.payload.get("bound") is True]
    unbound = [e for e in opened if e.payload.get("bound") is not True]
    out.put("dpop.required", f.dpop_required)
    out.put("dpop.tasks_bound", len(bound), bound)
    out.put("dpop.tasks_unbound", len(unbound), unbound, detail=sorted({e.agent or "" for e in unbound}))


def _decisions(out: Evidence, f: Facts, t: Mapping[str, list[Event]]) -> None:
    ds = t[ev.DECISION]
    by: dict[str, list[Event]] = defaultdict(list)
    reasons: Counter[str] = Counter()
    for e in ds:
        by[str(e.payload.get("outcome"))].append(e)
        ids = [str(r.get("policy_id")) for r in e.payload.get("reasons") or [] if isinstance(r, dict)]
        for key in ids or [str(e.payload.get("code") or e.payload.get("outcome"))]:
            reasons[f"{e.payload.get('outcome')}: {key}"] += 1
    out.put("decisions.total", len(ds), ds)
    for outcome in ("allow", "deny", "approval_required"):
        out.put(f"decisions.{outcome}", len(by[outcome]), by[outcome])
    out.put("decisions.reasons", len(reasons), ds, detail=dict(reasons.most_common()))
    oos = [e for e in by["deny"] if e.payload.get("code") == "out_of_scope"]
    out.put("decisions.out_of_scope", len(oos), oos)
    for key, mech in (
        ("decisions.denied_by_taint", "taint"),
        ("decisions.denied_by_environment", "environment-isolation"),
    ):
        rule_ids = set(f.policy.by_mechanism.get(mech, ()))
        hit = [
            e
            for e in by["deny"]
            if any(
                isinstance(r, dict) and r.get("policy_id") in rule_ids for r in e.payload.get("reasons") or []
            )
        ]
        out.put(key, len(hit), hit)
    out.series = _series(ds, f)
    forwarded = t[ev.CALL_FORWARDED]
    out.put("gateway.calls_forwarded", len(forwarded), forwarded)
    blind = [e for e in forwarded if not e.decision_id]
    out.put("gateway.calls_without_decision", len(blind), blind or forwarded)
    out.put("gateway.tool_changes", len(t[ev.TOOL_DEFINITION_CHANGED]), t[ev.TOOL_DEFINITION_CHANGED])


def _series(ds: Sequence[Event], f: Facts) -> dict[str, Any]:
    """Decisions per time bucket over the span that has events (at most ~40 buckets)."""
    if not ds:
        return {"bucket_seconds": 0, "buckets": []}
    lo, hi = ds[0].ts, ds[-1].ts
    size = next(
        (s for s in (1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 86400) if (hi - lo) / s <= 40), 7 * 86400
    )
    start = math.floor(lo / size) * size
    buckets: dict[float, Counter[str]] = defaultdict(Counter)
    for e in ds:
        buckets[start + math.floor((e.ts - start) / size) * size][str(e.payload.get("outcome"))] += 1
    n = int((hi - start) // size) + 1
    rows = [{"start": start + i * size, **dict(buckets.get(start + i * size, Counter()))} for i in range(n)]
    return {"bucket_seconds": size, "buckets": rows}


def _credentials(out: Evidence, f: Facts, t: Mapping[str, list[Event]]) -> None:
    minted = t[ev.CREDENTIAL_MINTED]
    ttls = [float(e.payload.get("expires_at", e.ts)) - e.ts for e in minted]
    out.distributions["credential_ttl"] = [round(x, 3) for x in ttls]
    out.put("credentials.issued", len(minted), minted)
    out.put("credentials.ttl_p50", _rounded(percentile(ttls, 50)), minted)
    out.put("credentials.ttl_max", _rounded(max(ttls, default=None)), minted)
    minted_by_lease = {e.lease_id: e for e in minted if e.lease_id}
    beyond, outlived, unbound = [], [], []
    for lease in f.leases:
        task = f.tasks.get(lease.task_id)
        if task is not None and lease.expires_at > task.expires_at + 0.001:
            beyond.append(lease.id)
        if (
            task is not None
            and task.closed_at is not None
            and lease.revoked_at is None
            and lease.expires_at > task.closed_at
        ):
            outlived.append(lease.id)
        if not lease.audience:
            unbound.append(lease.id)

    def evs(ids: Sequence[str]) -> list[Event]:
        return [minted_by_lease[i] for i in ids if i in minted_by_lease]

    # A count of violations that is 0 points at the events that were checked.
    out.put("credentials.beyond_task", len(beyond), evs(beyond) or minted, detail=beyond)
    out.put("credentials.outlived_task", len(outlived), evs(outlived) or minted, detail=outlived)
    out.put("credentials.unbound_audience", len(unbound), evs(unbound) or minted, detail=unbound)
    revoked = t[ev.CREDENTIAL_REVOKED]
    out.put(
        "credentials.revoked",
        len(revoked),
        revoked,
        detail=dict(Counter(str(e.payload.get("reason")) for e in revoked)),
    )
    # Revocation latency: from the event that ended the lease's task to the lease's revocation.
    ends: dict[str, Event] = {}
    for ty in _ENDS:
        for e in t[ty]:
            if e.task_id and (e.task_id not in ends or e.ts < ends[e.task_id].ts):
                ends[e.task_id] = e
    pairs = [(ends[r.task_id], r) for r in revoked if r.task_id in ends and r.ts >= ends[r.task_id].ts]
    lat = [r.ts - end.ts for end, r in pairs]
    out.distributions["revocation_latency"] = [round(x, 6) for x in lat]
    behind = [e for pair in pairs for e in pair]
    out.put("revocation.measured", len(lat), behind)
    out.put("revocation.latency_p50", _rounded(percentile(lat, 50)), behind)
    out.put("revocation.latency_p99", _rounded(percentile(lat, 99)), behind)
    out.put("revocation.latency_max", _rounded(max(lat, default=None)), behind)
    # The kill switch: one `tether revoke` call ends its trees at one instant, by one operator.
    kills = t[ev.TASK_REVOKED]
    uses = {(str(e.payload.get("by")), e.ts) for e in kills}
    out.put("killswitch.uses", len(uses), kills, detail=sorted({by for by, _ in uses}))
    out.put("killswitch.tasks_revoked", len(kills), kills)


def _approvals(out: Evidence, t: Mapping[str, list[Event]]) -> None:
    asked = {str(e.payload.get("approval_id")): e for e in t[ev.APPROVAL_REQUESTED]}
    granted, rejected = t[ev.APPROVAL_GRANTED], t[ev.APPROVAL_REJECTED]
    waits, who = [], Counter[str]()
    for e in (*granted, *rejected):
        req = asked.get(str(e.payload.get("approval_id")))
        who[str(e.payload.get("by") or "unknown")] += 1
        if req is not None:
            waits.append(e.ts - req.ts)
    out.distributions["approval_wait"] = [round(x, 3) for x in waits]
    decided = [*granted, *rejected]
    out.put("approvals.requested", len(asked), t[ev.APPROVAL_REQUESTED])
    out.put("approvals.granted", len(granted), granted)
    out.put("approvals.rejected", len(rejected), rejected)
    out.put("approvals.expired", len(t[ev.APPROVAL_EXPIRED]), t[ev.APPROVAL_EXPIRED])
    out.put("approvals.wait_p50", _rounded(percentile(waits, 50)), decided)
    out.put("approvals.wait_max", _rounded(max(waits, default=None)), decided)
    out.put("approvals.approvers", len(who), decided, detail=dict(who))


def _delegations(out: Evidence, f: Facts, t: Mapping[str, list[Event]]) -> None:
    offered = t[ev.TASK_DELEGATED]
    out.put("delegations.offered", len(offered), offered)
    children = [e for e in t[ev.TASK_OPENED] if e.parent_task_id]
    out.put("delegations.redeemed", len(children), children)
    depths = [int(e.payload.get("depth") or 0) for e in t[ev.TASK_OPENED]]
    out.put("delegations.max_depth", max(depths, default=0), children)
    out.put("delegations.depth_limit", f.max_depth)
    widened = []
    for e in children:
        parent = f.tasks.get(e.parent_task_id or "")
        scope = [g for g in e.payload.get("scope") or [] if isinstance(g, dict)]
        if parent is None:
            widened.append((e, "parent task not found in the store"))
            continue
        wide = [g for g in scope if not f.within(g, parent.scope)]
        if wide:
            widened.append((e, f"scope {wide} not within the parent's"))
        elif float(e.payload.get("expires_at") or 0) > parent.expires_at + 0.001:
            widened.append((e, "expires after its parent"))
        elif int(e.payload.get("depth") or 0) > f.max_depth:
            widened.append((e, "deeper than the configured maximum"))
    out.put(
        "delegations.widening",
        len(widened),
        [e for e, _ in widened] or children,
        detail=[{"event": eid(e), "why": why} for e, why in widened],
    )


def _policy(out: Evidence, f: Facts, t: Mapping[str, list[Event]]) -> None:
    loads = [e for e in f.policy_loads]
    in_window = [e for e in loads if e.ts >= f.since]
    before = [e for e in loads if e.ts < f.since]
    versions = [str(e.payload.get("version")) for e in ([before[-1]] if before else []) + in_window]
    out.put("policy.versions", len(dict.fromkeys(versions)), in_window, detail=list(dict.fromkeys(versions)))
    current = versions[-1] if versions else None
    out.put("policy.in_force", current, loads[-1:])
    p = f.policy
    out.put(
        "policy.dir_in_force",
        current is not None and p.version == current,
        detail={"policy_dir": p.directory, "version_on_disk": p.version, "files": list(p.files)},
        note=p.error,
    )
    for key, mech in (
        ("policy.taint_rule", "taint"),
        ("policy.environment_rule", "environment-isolation"),
        ("policy.burst_rule", "call-burst"),
    ):
        ids = list(p.by_mechanism.get(mech, ()))
        out.put(key, len(ids), detail=ids)
    out.put("policy.approval_rule", len(p.approval_ids), detail=list(p.approval_ids))
    fails = t[ev.POLICY_RELOAD_FAILED]
    out.put("policy.reload_failures", len(fails), fails)


def _audit(out: Evidence, f: Facts, t: Mapping[str, list[Event]]) -> None:
    out.put("audit.events_in_window", len(f.events), f.events)
    v = f.verify
    out.put("audit.chain_ok", v.ok, f.events, detail={"chains": dict(v.chains)})
    out.put("audit.events_verified", v.events)
    out.put("audit.breaks", len(v.breaks), detail=[b.to_dict() for b in v.breaks])
    out.put("audit.checkpoints_verified", v.checkpoints)
    cp = f.latest_checkpoint
    out.put(
        "audit.checkpoint_latest",
        None if cp is None else f"{cp.chain}:{cp.seq}",
        detail=None
        if cp is None
        else {"chain": cp.chain, "seq": cp.seq, "ts": cp.ts, "kid": cp.kid, "hash": cp.hash},
        note="" if cp is not None else "no signed checkpoint in the store",
    )
    out.put("audit.masking_rules", f.masking_rules)


__all__ = ["EVIDENCE", "Evidence", "Metric", "Spec", "compute", "eid", "percentile"]

"""Prometheus metrics of a broker (prometheus-client), served at ``/metrics``.

Two sources, so that the decision path pays almost nothing:

* **events** — counters and histograms are fed by an audit listener (:func:`install`),
  after commit, from the events the broker writes anyway: a ``decision`` event carries
  its outcome, code and ``latency_ms``; ``call.forwarded``/``call.result`` carry the
  gateway's upstream outcome and ``duration_ms``; ``credential.revoked`` carries its task's
  end (``task_ended_at``, from the store), so the revocation lag is observed by whichever
  process revoked the lease; ``approval.granted``/``approval.rejected`` carry the stored
  request time (``requested_at``) for the approval wait, and ``approval.expired`` its
  expiry too (written once per approval by the leader's pass, ``Broker.expire_approvals``,
  so each expiry is counted once by the process that moved it). The store and the audit chain
  report their own failures and append times through hooks (``Database.error_hooks``,
  ``AuditChain.append_hooks``).
* **this replica's feed follower** (:func:`follow_feed`, ``tether.replicas.FeedFollower``):
  how long after its commit each revocation reached this process, and when it last read
  the feed — per replica (``replica`` = ``node_id``).
* **the store** — gauges of shared state (tasks open, leases by state, approvals pending
  and the oldest wait, chain head and checkpoint ages, the leader lease) are read from
  the store at scrape time (:class:`StoreCollector`), so every worker and replica
  reports the same numbers and nothing has to be kept in step.

Several workers (``tether serve --workers N``): the parent sets
``PROMETHEUS_MULTIPROC_DIR`` before forking (:func:`enable_multiprocess`) and every
worker's counters live in files there; a scrape on any worker sums all of them. That is
why the metric objects are made on first use (:func:`metrics`), never at import.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from tether.audit import event as ev
from tether.audit.event import Event

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from tether.credentials.revocation import Feed
    from tether.runtime import Core

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Human waits: seconds to hours (``approvals.ttl_seconds`` is 900 by default).
_WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 86400.0)
_APPROVAL_DECIDED = {ev.APPROVAL_GRANTED: "granted", ev.APPROVAL_REJECTED: "rejected"}
#: Gauges holding a Unix time; each is also served as an age at scrape time (:func:`render`).
_TIMESTAMP_AGES = {
    "tether_revocation_feed_last_poll_timestamp_seconds": (
        "tether_revocation_feed_poll_age_seconds",
        "Time since this replica's feed follower last read the feed successfully.",
    ),
    "tether_revocation_feed_newest_applied_timestamp_seconds": (
        "tether_revocation_feed_newest_entry_age_seconds",
        "Age of the newest revocation this replica's feed follower applied (grows while nothing is revoked).",
    ),
}


class Metrics:
    """The counters and histograms of this process (one set per process)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.decisions = Counter(
            "tether_decisions",
            "Decisions by outcome and error code (code empty on allow).",
            ["outcome", "code"],
        )
        self.decision_seconds = Histogram(
            "tether_decision_seconds",
            "Time from the start of a decision to its audit record.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
        )
        self.audit_append_seconds = Histogram(
            "tether_audit_append_seconds",
            "Time to append a unit of audit events to the chain and commit it.",
            buckets=_LATENCY_BUCKETS,
        )
        self.revocation_lag_seconds = Histogram(
            "tether_revocation_lag_seconds",
            "Task end (stored) → lease revoked, observed by the process that revoked the lease.",
            buckets=_LAG_BUCKETS,
        )
        self.feed_lag_seconds = Histogram(
            "tether_revocation_feed_lag_seconds",
            "Revocation committed to the feed → applied by this replica's feed follower.",
            ["replica"],
            buckets=_LAG_BUCKETS,
        )
        # Unix times, so that `--workers` files merge by `max` (each worker has its own label).
        self.feed_polled = Gauge(
            "tether_revocation_feed_last_poll_timestamp_seconds",
            "When this replica's feed follower last read the feed successfully (Unix time).",
            ["replica"],
            multiprocess_mode="max",
        )
        self.feed_newest = Gauge(
            "tether_revocation_feed_newest_applied_timestamp_seconds",
            "Commit time of the newest revocation this replica's feed follower applied (Unix time).",
            ["replica"],
            multiprocess_mode="max",
        )
        self.approval_wait_seconds = Histogram(
            "tether_approval_wait_seconds",
            "Approval requested → granted, rejected or expired unanswered, by outcome.",
            ["outcome"],
            buckets=_WAIT_BUCKETS,
        )
        self.revocations = Counter("tether_revocations", "Leases revoked, by reason.", ["reason"])
        self.irrevocable = Counter("tether_leases_irrevocable", "Leases given up as irrevocable.")
        self.upstream_seconds = Histogram(
            "tether_gateway_upstream_seconds",
            "Gateway upstream call duration.",
            ["gateway", "service"],
            buckets=_LATENCY_BUCKETS,
        )
        self.upstream_errors = Counter(
            "tether_gateway_upstream_errors",
            "Gateway upstream calls that failed (unreachable, timeout, broken, 5xx, tool error).",
            ["gateway", "service", "outcome"],
        )
        self.store_errors = Counter("tether_store_errors", "Store failures, by error code.", ["code"])
        self.shadow_divergences = Counter(
            "tether_policy_shadow_divergences",
            "Decisions the shadow policy set would have decided otherwise, by kind (allow→deny, …).",
            ["kind"],
        )
        self.shadow_errors = Counter("tether_policy_shadow_errors", "Shadow policy evaluations that failed.")
        self._children: dict[tuple[str, str], Any] = {}

    # -- the audit listener (after commit, in the writer's thread) -----------------------
    def on_event(self, e: Event) -> None:
        t = e.type
        if t == ev.DECISION:
            p = e.payload
            outcome = str(p.get("outcome", ""))
            key = (outcome, str(p.get("code", "")))
            pair = self._children.get(key)
            if pair is None:  # label lookups are the slow part: once per (outcome, code)
                pair = self._children[key] = (
                    self.decisions.labels(*key),
                    self.decision_seconds.labels(outcome),
                )
            pair[0].inc()
            latency = p.get("latency_ms")
            if isinstance(latency, int | float):
                pair[1].observe(latency / 1000)
        elif t in (ev.CALL_FORWARDED, ev.CALL_RESULT):
            self._on_call(e.payload)
        elif t == ev.CREDENTIAL_REVOKED:
            p = e.payload
            self.revocations.labels(str(p.get("reason", ""))[:32]).inc()
            ended = p.get("task_ended_at")  # absent when the lease was not revoked for its task's end
            if isinstance(ended, int | float):
                self.revocation_lag_seconds.observe(max(0.0, e.ts - ended))
        elif t in _APPROVAL_DECIDED:
            asked = e.payload.get("requested_at")
            if isinstance(asked, int | float):
                self.approval_wait_seconds.labels(_APPROVAL_DECIDED[t]).observe(max(0.0, e.ts - asked))
        elif t == ev.APPROVAL_EXPIRED:
            asked, ended = e.payload.get("requested_at"), e.payload.get("expires_at")
            if isinstance(asked, int | float) and isinstance(ended, int | float):
                # Requested → expiry: the pass that moved it may run after the expiry.
                self.approval_wait_seconds.labels("expired").observe(max(0.0, ended - asked))
        elif t == ev.CREDENTIAL_IRREVOCABLE:
            self.irrevocable.inc()
        elif t == ev.POLICY_SHADOW_DIVERGED:
            self.shadow_divergences.labels(str(e.payload.get("kind", ""))[:32]).inc()
        elif t == ev.POLICY_SHADOW_ERROR:
            self.shadow_errors.inc()

    def _on_call(self, p: dict[str, Any]) -> None:
        gateway = str(p.get("gateway", ""))[:16]
        service = str(p.get("service") or p.get("server") or "")[:64]
        duration = p.get("duration_ms")
        if isinstance(duration, int | float):
            self.upstream_seconds.labels(gateway, service).observe(duration / 1000)
        outcome = str(p.get("outcome", "ok"))[:48]
        status = p.get("upstream_status")
        failed = outcome not in ("ok", "") or p.get("is_error") is True
        if isinstance(status, int) and status >= 500:
            failed, outcome = True, f"status_{status}" if outcome in ("ok", "") else outcome
        if failed:
            self.upstream_errors.labels(gateway, service, outcome).inc()

    def on_store_error(self, code: str) -> None:
        self.store_errors.labels(code).inc()

    def on_append(self, seconds: float) -> None:
        self.audit_append_seconds.observe(seconds)


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> Metrics:
    """This process's metrics, made on first use (after a fork, in the worker)."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def install(rt: Core) -> None:
    """Feed this process's metrics from ``rt``'s audit chain and store (``Runtime.start``)."""
    if not rt.settings.metrics.enabled:
        return
    m = metrics()
    remove = rt.audit.add_listener(m.on_event)
    rt.db.error_hooks.append(m.on_store_error)
    rt.audit.append_hooks.append(m.on_append)
    rt.on_close.append(remove)


def follow_feed(rt: Core, feed: Feed) -> None:
    """Run this replica's feed follower for the feed-lag series (``Runtime.start``, after
    the credentials layer made ``feed``)."""
    if not rt.settings.metrics.enabled:
        return
    from tether.replicas import FeedFollower

    m = metrics()
    node = rt.settings.node_id
    lag = m.feed_lag_seconds.labels(node)
    polled, newest = m.feed_polled.labels(node), m.feed_newest.labels(node)
    polled.set(time.time())  # a follower that never reads ages from its start (alertable)

    def applied(now: float, committed: Sequence[float]) -> None:
        for ts in committed:
            lag.observe(max(0.0, now - ts))  # clocks of two hosts: their offset is in it
        newest.set(max(committed))

    rt.on_close.append(FeedFollower(feed, on_apply=applied, on_poll=polled.set).start())


def enable_multiprocess(directory: str) -> None:
    """Keep counters in files under ``directory`` (before forking workers)."""
    os.environ[MULTIPROC_ENV] = directory
    from prometheus_client import values

    # The value class is chosen when prometheus_client is imported; choose again.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class StoreCollector:
    """Gauges of shared state, read from the store at scrape time."""

    def __init__(self, rt: Core) -> None:
        self.rt = rt

    def describe(self) -> list[Any]:
        return []  # collected on demand only; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from tether.errors import TetherError
        from tether.store import credentials_tables as ct
        from tether.store import tables as t
        from tether.store.audit_tables import audit_checkpoints
        from tether.store.repo import approval_state_is

        now = time.time()
        up = GaugeMetricFamily("tether_store_up", "1 when the store answered this scrape.")
        try:
            with self.rt.db.read() as conn:
                tasks = conn.execute(
                    select(func.count())
                    .select_from(t.tasks)
                    .where(t.tasks.c.state == "active", t.tasks.c.expires_at > now)
                ).scalar_one()
                leases = conn.execute(
                    select(ct.leases.c.state, func.count()).group_by(ct.leases.c.state)
                ).all()
                approvals = conn.execute(  # past its expiry it waits for nobody (moved yet or not)
                    select(func.count(), func.min(t.approvals.c.created_at)).where(
                        approval_state_is("pending", self.rt.broker.clock())
                    )
                ).one()
                chains = conn.execute(select(t.audit_chains.c.chain, t.audit_chains.c.updated_at)).all()
                checkpoints = conn.execute(
                    select(audit_checkpoints.c.chain, func.max(audit_checkpoints.c.ts)).group_by(
                        audit_checkpoints.c.chain
                    )
                ).all()
                leader = conn.execute(select(ct.leader_leases)).all()
        except TetherError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        g = GaugeMetricFamily("tether_tasks_open", "Active, unexpired tasks.")
        g.add_metric([], tasks)
        yield g
        g = GaugeMetricFamily(
            "tether_leases", "Credential leases by state (irrevocable included).", labels=["state"]
        )
        by_state = {"pending": 0, "active": 0, "revoking": 0, "revoked": 0, "irrevocable": 0}
        by_state.update({str(s): int(n) for s, n in leases})
        for state, n in sorted(by_state.items()):
            g.add_metric([state], n)
        yield g
        g = GaugeMetricFamily("tether_approvals_pending", "Approvals waiting for a human (unexpired).")
        g.add_metric([], int(approvals[0]))
        yield g
        g = GaugeMetricFamily("tether_approvals_oldest_wait_seconds", "Wait of the oldest pending approval.")
        g.add_metric(
            [], max(0.0, self.rt.broker.clock() - float(approvals[1])) if approvals[1] is not None else 0.0
        )
        yield g
        g = GaugeMetricFamily(
            "tether_audit_chain_head_age_seconds", "Time since each chain's last append.", labels=["chain"]
        )
        for chain, updated in chains:
            g.add_metric([chain], max(0.0, now - float(updated)))
        yield g
        g = GaugeMetricFamily(
            "tether_audit_checkpoint_age_seconds",
            "Time since each chain's last signed checkpoint.",
            labels=["chain"],
        )
        for chain, ts in checkpoints:
            g.add_metric([chain], max(0.0, now - float(ts)))
        yield g
        g = GaugeMetricFamily(
            "tether_leader_epoch", "The periodic-jobs leader lease: its epoch, by holder.", labels=["holder"]
        )
        for row in leader:
            if float(row.expires_at) > now:
                g.add_metric([row.holder], int(row.epoch))
        yield g


def render(rt: Core) -> tuple[bytes, str]:
    """The Prometheus text of this process (all workers' counters under ``--workers``)."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    metrics()  # every family is present from the first scrape, even at zero
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(rt))  # first: a store error it meets is in the counters below
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        inner: Collector = multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call]
    else:
        inner = REGISTRY
    reg.register(_WithAges(inner))
    return generate_latest(reg), CONTENT_TYPE_LATEST


class _WithAges:
    """The process's (or all workers') metrics, plus an age for each timestamp gauge."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        now = time.time()
        for family in self.inner.collect():
            yield family
            age = _TIMESTAMP_AGES.get(family.name)
            if age is None:
                continue
            g = GaugeMetricFamily(age[0], age[1], labels=["replica"])
            for sample in family.samples:
                if sample.value > 0:  # 0: never set (no entry applied yet): no age, not 56 years
                    g.add_metric([sample.labels.get("replica", "")], max(0.0, now - sample.value))
            yield g

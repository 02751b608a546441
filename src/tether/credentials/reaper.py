"""The reaper: finishes revocations and cleans up after crashes, on a timer and at start.

One pass (:meth:`Reaper.reap`):

1. pending leases that no mint can still be working on (this node's at start; any
   replica's after ``credentials.pending_timeout_seconds``) → revoking;
2. active leases past their expiry, and active leases of tasks that ended → revoking;
3. due revocations, in batches, each batch **claimed** by this worker
   (:func:`leases.claim_due`: ``FOR UPDATE SKIP LOCKED`` plus a compare-and-set, with a
   visibility timeout), so replicas sweeping one backlog never work the same lease at
   once. The connector cuts and drops the batch (``revoke_many``); success marks each
   lease revoked with an audit event (carrying ``task_ended_at`` when the revocation is
   for its task's end: the revocation lag, ``tether.metrics``); failure retries with
   exponential backoff (capped at 5 minutes) and, after
   ``credentials.revoke_max_attempts``, marks it irrevocable: an audit event, an error
   log, a counter, and ``tether leases list --irrevocable`` — never silently dropped.
   Every transition is a compare-and-set: a worker that lost a race (its claim expired
   and another finished the lease) changes nothing, logs nothing. Before claiming, the
   claims of a revoker that is gone (``tether.replicas.gone``: its replica's heartbeat
   is dead, or its node id runs in another process now) are made due again, so a
   replica killed between its claim and its record delays the revocation by a pass,
   not by the visibility timeout;
4. the PostgreSQL sweep (every ``SWEEP_INTERVAL``): every role this broker tagged that
   no lease accounts for is dropped (covers a crash between ``CREATE ROLE`` and the
   lease commit on SQLite);
5. the revocation feed drops entries whose subject has expired anyway.

Steps 2, 4 and 5, and step 1 for other replicas' leases, are scans of the whole store:
with several workers or replicas only the process holding the leader lease
(``tether.leader``, ``is_leader``) runs them. Step 3 is claimed lease by lease, so every
process runs it (revocations start on the replica that ended the task and, on
PostgreSQL, on every replica that hears its commit), and step 1 for
this node's own pending leases runs at its start, leader or not. Taking over dead claims
(step 3) runs in every process too: it reads only the claimed revocations, and a survivor
must not wait for a leader that may be the replica that died.

A worker thread runs a pass at start (so a broken connector never blocks start-up),
then sleeps until woken or a second passes. It is woken only *after* the transaction that
made a revocation due has committed (a task's end: by the audit listener, once the cut is
queued; a failed mint, an operator's revoke: by their callers; another replica's
revocation: by the feed's LISTEN connection, ``revocation.Feed.listen``): woken inside
it, the claim could land in the instant between that commit and a crash of this
process, and the lease would wait for the claim's death to be noticed instead of being
claimed by a survivor at once.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tether import replicas
from tether.audit import event as ev
from tether.credentials import failpoints
from tether.credentials import leases as ls
from tether.credentials.connectors.postgres import PostgresConnector, role_name
from tether.credentials.service import Credentials, ended_field, lease_fields
from tether.errors import TetherError

log = logging.getLogger("tether.credentials")

MAX_BACKOFF = 300.0
IDLE_WAKE = 1.0
BATCH = 100  # leases claimed (and dropped per target in one transaction) at a time
CLAIM_VISIBILITY = 60.0  # a claim not finished by then is another worker's to take
RECORD_CHUNK = 20  # leases recorded (state change + audit event) per transaction
MAX_BATCHES = 50  # per pass, so one pass ends and the other steps get their turn
SWEEP_INTERVAL = 30.0


class Reaper:
    def __init__(self, creds: Credentials, is_leader: Callable[[], bool] = lambda: True) -> None:
        self.creds = creds
        self.is_leader = is_leader
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False  # the first pass also reaps this node's pending leases
        self._last_sweep = float("-inf")
        self.passes = 0
        creds.wake = self._wake.set

    # -- one pass ------------------------------------------------------------------------
    def reap(self, *, sweep: bool = True) -> dict[str, int]:
        with self._lock:
            c = self.creds
            now = c.clock()
            out = {
                "stale": 0,
                "expired": 0,
                "orphaned": 0,
                "reclaimed": 0,
                "revoked": 0,
                "failed": 0,
                "swept": 0,
            }
            leader = self.is_leader()
            stale: list[ls.Lease] = []
            expired: list[ls.Lease] = []
            orphaned: list[ls.Lease] = []
            with c.db.read() as conn:
                if leader or not self._started:
                    stale = ls.stale_pending(
                        conn,
                        node_id=None if self._started else c.node_id,
                        older_than=now - c.settings.credentials.pending_timeout_seconds,
                    )
                if leader:
                    expired = ls.expired_live(conn, now)
                    orphaned = ls.live_of_ended_tasks(conn)
            inflight = c.inflight_leases()
            stale = [x for x in stale if x.id not in inflight]
            for leases, reason, key in (
                (stale, "crashed_while_minting", "stale"),
                (expired, "expired", "expired"),
                (orphaned, "task_ended", "orphaned"),
            ):
                if leases:
                    with c.audit.unit() as u:
                        # Expired credentials are dead by their own `exp`: no feed entry needed.
                        cut = c.start_revocations(u, leases, reason, by="reaper", feed=reason != "expired")
                    c.cutter.submit(cut)
                    out[key] = len(cut)
            self._started = True
            out["reclaimed"] = self.take_over_dead_claims()
            done, failed = self.process_revocations()
            out["revoked"], out["failed"] = done, failed
            if leader and (sweep or time.monotonic() - self._last_sweep >= SWEEP_INTERVAL):
                out["swept"] = self.sweep()
                self._last_sweep = time.monotonic()
            if leader:
                c.feed.prune(now, keep_seconds=c.settings.limits.jwt_leeway_seconds + 300)
            self.passes += 1
            return out

    def periodic(self) -> dict[str, int]:
        """The pass the runtime's periodic loop runs (sweeps only when one is due)."""
        return self.reap(sweep=False)

    def take_over_dead_claims(self) -> int:
        """Make due again the revocations claimed by a revoker that is gone (see the module
        docstring, step 3); returns how many."""
        c = self.creds
        with c.db.read() as conn:
            # A token is `<claimant>:<batch>` (process_revocations); our own claimant is alive.
            claims = {t: t.rpartition(":")[0] for t in ls.claims_in_flight(conn, c.clock())}
            gone = replicas.gone(conn, set(claims.values())) if claims else set()
        dead = {t for t, who in claims.items() if who in gone}
        if not dead:
            return 0
        with c.db.begin() as conn:
            released = ls.release_claims(conn, dead, c.clock())
        if released:
            log.warning(
                "took over %d revocation(s) claimed by a replica that is gone (%s)",
                len(released),
                ", ".join(sorted({t.rpartition(":")[0] for t in dead})),
            )
        return len(released)

    def process_revocations(self) -> tuple[int, int]:
        """Claim and finish due revocations, batch by batch; returns (revoked, failed)."""
        c = self.creds
        done = failed = 0
        claimant = replicas.claimant(c.node_id)
        for _ in range(MAX_BATCHES):
            token = f"{claimant}:{secrets.token_hex(6)}"
            with c.db.begin() as conn:
                batch = ls.claim_due(conn, c.clock(), token, visibility=CLAIM_VISIBILITY, limit=BATCH)
            if not batch:
                break
            outcomes = self._revoke(batch)
            failpoints.hit("reaper.after_revoke")  # the replica tests: dead between drop and record
            # Recorded in small transactions: each holds this replica's audit chain, which
            # every decision also needs.
            for i in range(0, len(batch), RECORD_CHUNK):
                d, f = self._record(batch[i : i + RECORD_CHUNK], outcomes, token)
                done, failed = done + d, failed + f
            if len(batch) < BATCH:
                break
        return done, failed

    def _revoke(self, batch: Sequence[ls.Lease]) -> dict[str, Exception | None]:
        c = self.creds
        out: dict[str, Exception | None] = {}
        by_connector: dict[str, list[ls.Lease]] = {}
        for lease in batch:
            by_connector.setdefault(lease.connector, []).append(lease)
        for name, leases in by_connector.items():
            connector = c.connectors.get(name)
            if connector is None:
                out.update({x.id: RuntimeError(f"connector `{name}` is not configured here") for x in leases})
            elif isinstance(connector, PostgresConnector):
                try:
                    out.update(connector.revoke_many(leases))
                except Exception as exc:  # unexpected: count it against every lease of the batch
                    out.update({x.id: exc for x in leases})
            else:
                for lease in leases:
                    try:
                        connector.revoke(lease)
                        out[lease.id] = None
                    except Exception as exc:
                        out[lease.id] = exc
        return out

    def _record(
        self, batch: Sequence[ls.Lease], outcomes: dict[str, Exception | None], token: str
    ) -> tuple[int, int]:
        """One transaction for the batch: every transition a compare-and-set."""
        c = self.creds
        now = c.clock()
        revoked: list[ls.Lease] = []
        retry: list[tuple[ls.Lease, int, str]] = []
        irrevocable: list[tuple[ls.Lease, int, str]] = []
        with c.audit.unit() as u:
            done = [x for x in batch if x.id in outcomes and outcomes[x.id] is None]
            ended = ls.task_end_times(u.conn, [x.task_id for x in done if ls.is_task_end(x.revoke_reason)])
            for lease in batch:
                exc = outcomes.get(lease.id, RuntimeError("not attempted"))
                if exc is None:
                    if ls.mark_revoked(u.conn, lease.id, now):
                        revoked.append(lease)
                        u.emit(
                            ev.CREDENTIAL_REVOKED,
                            {
                                "connector": lease.connector,
                                "reason": lease.revoke_reason or "revoked",
                                "by": "reaper",
                                "audience": lease.audience,
                                "attempts": lease.attempts + 1,
                                **ended_field(ended, lease),
                            },
                            **lease_fields(lease),
                        )
                    continue
                attempts = lease.attempts + 1
                final = attempts >= c.settings.credentials.revoke_max_attempts
                code = getattr(exc, "code", type(exc).__name__)
                error = f"{code}: {exc.message if isinstance(exc, TetherError) else exc}"[:512]
                if not ls.mark_failed(
                    u.conn,
                    lease.id,
                    attempts=attempts,
                    error=error,
                    next_attempt_at=None if final else now + min(MAX_BACKOFF, 2.0**attempts),
                    irrevocable=final,
                    claim=token,
                ):
                    continue  # lost the lease to another worker meanwhile: not ours to record
                if final:
                    irrevocable.append((lease, attempts, error))
                    u.emit(
                        ev.CREDENTIAL_IRREVOCABLE,
                        {
                            "connector": lease.connector,
                            "attempts": attempts,
                            "error": error,
                            "audience": lease.audience,
                        },
                        **lease_fields(lease),
                    )
                else:
                    retry.append((lease, attempts, error))
        c.counters["revoked"] += len(revoked)
        c.counters["revoke_failed"] += len(retry) + len(irrevocable)
        c.counters["irrevocable"] += len(irrevocable)
        for lease, attempts, error in irrevocable:
            log.error(
                "lease %s (%s) is IRREVOCABLE after %d attempts: %s; see `tether leases list --irrevocable`",
                lease.id,
                lease.connector,
                attempts,
                error,
            )
        for lease, attempts, error in retry:
            log.warning("revoking lease %s failed (attempt %d): %s", lease.id, attempts, error)
        return len(revoked), len(retry) + len(irrevocable)

    def sweep(self) -> int:
        c = self.creds
        swept = 0
        for connector in c.connectors.values():
            if not isinstance(connector, PostgresConnector):
                continue

            def keep(name: str = connector.name) -> set[str]:
                with c.db.read() as conn:
                    kept = ls.unrevoked_role_names(conn, name)
                return kept | {role_name(x) for x in c.inflight_leases()}

            try:
                swept += len(connector.sweep(keep))
            except Exception as exc:  # the server may be down; the next pass tries again
                log.warning("postgres role sweep failed: %s", getattr(exc, "message", exc))
        return swept

    # -- the worker ----------------------------------------------------------------------
    def _run(self) -> None:
        last_full = float("-inf")
        while not self._stop.is_set():
            # Clear before working: a wake that arrives during the pass is kept for the next.
            self._wake.clear()
            try:
                if time.monotonic() - last_full >= IDLE_WAKE * 2:
                    self.reap(sweep=not self._started)
                    last_full = time.monotonic()
                else:
                    with self._lock:
                        self.process_revocations()
            except Exception as exc:  # never let the worker die; the next pass retries
                log.warning("credentials reaper pass failed: %s", getattr(exc, "message", exc))
            self._wake.wait(IDLE_WAKE)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tether-credentials-reaper", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def status(self) -> dict[str, Any]:
        return {"passes": self.passes, "running": self._thread is not None}

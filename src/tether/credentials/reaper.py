"""The reaper: finishes revocations and cleans up after crashes, on a timer and at start.

One pass (:meth:`Reaper.reap`):

1. pending leases that no mint can still be working on (this node's at start; any
   replica's after ``credentials.pending_timeout_seconds``) → revoking;
2. active leases past their expiry, and active leases of tasks that ended → revoking;
3. every due revocation → ``connector.revoke``; success marks it revoked with an audit
   event; failure retries with exponential backoff (capped at 5 minutes) and, after
   ``credentials.revoke_max_attempts``, marks it irrevocable: an audit event, an error
   log, a counter, and ``tether leases list --irrevocable`` — never silently dropped;
4. the PostgreSQL sweep: every role this broker tagged that has no live lease is dropped
   (covers a crash between ``CREATE ROLE`` and the lease commit on SQLite);
5. the revocation feed drops entries whose subject has expired anyway.

A worker thread runs a pass at start (so a broken connector never blocks start-up),
then sleeps until woken (a task ended, a mint failed) or a second passes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from tether.audit import event as ev
from tether.credentials import leases as ls
from tether.credentials.connectors.postgres import PostgresConnector, role_name
from tether.credentials.service import Credentials, lease_fields

log = logging.getLogger("tether.credentials")

MAX_BACKOFF = 300.0
IDLE_WAKE = 1.0


class Reaper:
    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False  # the first pass also reaps this node's pending leases
        self.passes = 0
        creds.wake = self._wake.set

    # -- one pass ------------------------------------------------------------------------
    def reap(self) -> dict[str, int]:
        with self._lock:
            c = self.creds
            now = c.clock()
            out = {"stale": 0, "expired": 0, "orphaned": 0, "revoked": 0, "failed": 0, "swept": 0}
            with c.db.read() as conn:
                stale = ls.stale_pending(
                    conn,
                    node_id=None if self._started else c.node_id,
                    older_than=now - c.settings.credentials.pending_timeout_seconds,
                )
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
                        c.start_revocations(u, leases, reason, by="reaper", feed=reason != "expired")
                    out[key] = len(leases)
            self._started = True
            done, failed = self.process_revocations()
            out["revoked"], out["failed"] = done, failed
            out["swept"] = self.sweep()
            c.feed.prune(now, keep_seconds=c.settings.limits.jwt_leeway_seconds + 300)
            self.passes += 1
            return out

    def process_revocations(self) -> tuple[int, int]:
        c = self.creds
        done = failed = 0
        with c.db.read() as conn:
            due = ls.due_revocations(conn, c.clock())
        for lease in due:
            connector = c.connectors.get(lease.connector)
            try:
                if connector is None:
                    raise RuntimeError(f"connector `{lease.connector}` is not configured here")
                connector.revoke(lease)
            except Exception as exc:
                failed += 1
                self._failed(lease, exc)
                continue
            with c.audit.unit() as u:
                if ls.mark_revoked(u.conn, lease.id, c.clock()):
                    c.counters["revoked"] += 1
                    done += 1
                    u.emit(
                        ev.CREDENTIAL_REVOKED,
                        {
                            "connector": lease.connector,
                            "reason": lease.revoke_reason or "revoked",
                            "by": "reaper",
                            "audience": lease.audience,
                            "attempts": lease.attempts + 1,
                        },
                        **lease_fields(lease),
                    )
        return done, failed

    def _failed(self, lease: ls.Lease, exc: Exception) -> None:
        c = self.creds
        attempts = lease.attempts + 1
        irrevocable = attempts >= c.settings.credentials.revoke_max_attempts
        code = getattr(exc, "code", type(exc).__name__)
        error = f"{code}: {getattr(exc, 'message', '')}"[:512]
        c.counters["revoke_failed"] += 1
        with c.audit.unit() as u:
            ls.mark_failed(
                u.conn,
                lease.id,
                attempts=attempts,
                error=error,
                next_attempt_at=None if irrevocable else c.clock() + min(MAX_BACKOFF, 2.0**attempts),
                irrevocable=irrevocable,
            )
            if irrevocable:
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
        if irrevocable:
            c.counters["irrevocable"] += 1
            log.error(
                "lease %s (%s) is IRREVOCABLE after %d attempts: %s; see `tether leases list --irrevocable`",
                lease.id,
                lease.connector,
                attempts,
                error,
            )
        else:
            log.warning("revoking lease %s failed (attempt %d): %s", lease.id, attempts, error)

    def sweep(self) -> int:
        c = self.creds
        swept = 0
        for connector in c.connectors.values():
            if not isinstance(connector, PostgresConnector):
                continue
            with c.db.read() as conn:
                keep = ls.live_role_names(conn, connector.name)
            keep |= {role_name(x) for x in c.inflight_leases()}
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
                    self.reap()
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

"""Leadership: the cluster-wide periodic jobs run in one process at a time.

Workers (``tether serve --workers N``) and replicas (several brokers on one PostgreSQL
store) all run the same periodic loop. Jobs whose effect is global — expiring due tasks,
rotating the signing key, the reaper's scans for expired and orphaned leases, the
PostgreSQL role sweep, purging the DPoP replay cache, scheduled secret rotation — must
run once, not once per process. Each process therefore competes for one row of
``leader_leases``: the holder renews it every :data:`RENEW_S`; when it stops renewing
(stopped, killed, cut off from the store) the row expires after :data:`LEASE_S` and the
next process that looks takes it over, with ``epoch`` + 1. A clean shutdown deletes the
row, so a successor takes over at its next attempt.

One row, one compare-and-set ``UPDATE`` (renew when ours, take over when expired), the
same on SQLite and PostgreSQL; no session-bound advisory lock, so nothing depends on
one connection staying open in the pool. What it costs: a killed leader is replaced
within ``LEASE_S + RENEW_S`` and, across hosts, the clocks must agree to well within
``LEASE_S - VALID_S`` (NTP does). A process counts itself leader only until
``VALID_S`` after the start of its last successful renewal (monotonic clock), which is
shorter than the lease, so it stops before anyone else may start.

Work that is claimed item by item (the reaper's revocations: ``FOR UPDATE SKIP LOCKED``
plus a compare-and-set per lease) runs everywhere: it is safe in parallel, keeps
revocation fast on the replica that closed the task, and lets the others finish it at once
when that replica dies (``credentials.reaper``). Per-process work (the signed
checkpoints of this process's own audit chain) runs everywhere too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import case, delete, insert, or_, select, update

from tether.errors import TetherError
from tether.store import credentials_tables as ct
from tether.store.db import Database

log = logging.getLogger("tether")

NAME = "periodic"
LEASE_S = 5.0  # how long a renewal holds the row
RENEW_S = 1.0  # how often the holder renews it (and the others try to take it)
VALID_S = 4.0  # how long after a renewal's start this process still acts as leader


@dataclass(frozen=True, slots=True)
class Holder:
    holder: str
    host: str
    pid: int
    epoch: int
    acquired_at: float
    expires_at: float


class Leadership:
    """This process's claim on the leader lease ``name`` (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        holder: str,
        *,
        name: str = NAME,
        lease_s: float = LEASE_S,
        valid_s: float = VALID_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if valid_s >= lease_s:
            raise ValueError("valid_s must be shorter than lease_s")
        self.db = db
        self.holder = holder[:64]
        self.name = name
        self.lease_s = lease_s
        self.valid_s = valid_s
        self.clock = clock
        self.monotonic = monotonic
        self.epoch = 0
        self.changes = 0  # times this process became leader
        self._valid_until = float("-inf")
        self._host = socket.gethostname()[:256]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return self.monotonic() < self._valid_until

    def try_acquire(self) -> bool:
        """One attempt: renew the lease when ours, take it over when free or expired."""
        was = self.is_leader()
        started = self.monotonic()
        now = self.clock()
        t = ct.leader_leases
        mine = t.c.holder == self.holder
        try:
            with self.db.begin() as conn:
                res = conn.execute(
                    update(t)
                    .where(t.c.name == self.name, or_(mine, t.c.expires_at < now))
                    .values(
                        holder=self.holder,
                        host=self._host,
                        pid=os.getpid(),
                        expires_at=now + self.lease_s,
                        epoch=case((mine, t.c.epoch), else_=t.c.epoch + 1),
                        acquired_at=case((mine, t.c.acquired_at), else_=now),
                    )
                    .returning(t.c.epoch)
                )
                row = res.first()
                if row is None:
                    if conn.execute(select(t.c.name).where(t.c.name == self.name)).first() is not None:
                        return self._lost(was)  # another live holder
                    # A racing first insert makes this fail: that one is the leader.
                    conn.execute(
                        insert(t).values(
                            name=self.name,
                            holder=self.holder,
                            host=self._host,
                            pid=os.getpid(),
                            epoch=1,
                            acquired_at=now,
                            expires_at=now + self.lease_s,
                        )
                    )
                    epoch = 1
                else:
                    epoch = int(row.epoch)
        except TetherError as exc:
            # Keep acting until our own validity runs out: a blip must not stop the jobs,
            # and nobody else can take the row before then.
            log.debug("leader lease attempt failed: %s", exc.message)
            return self.is_leader()
        self._valid_until = started + self.valid_s
        if not was or epoch != self.epoch:
            self.changes += 1
            log.info("this process (%s) now runs the periodic jobs (leader epoch %d)", self.holder, epoch)
        self.epoch = epoch
        return True

    def _lost(self, was: bool) -> bool:
        self._valid_until = float("-inf")
        if was:
            log.info("this process (%s) no longer runs the periodic jobs", self.holder)
        return False

    def current(self) -> Holder | None:
        """The row as stored (who holds the lease, until when); for status and tests."""
        t = ct.leader_leases
        with self.db.read() as conn:
            row = conn.execute(select(t).where(t.c.name == self.name)).first()
        if row is None:
            return None
        return Holder(
            row.holder, row.host, int(row.pid), int(row.epoch), float(row.acquired_at), float(row.expires_at)
        )

    # -- the renewing thread ---------------------------------------------------------------
    def start(self, renew_s: float = RENEW_S) -> Callable[[], None]:
        """Try once now (a lone process leads from its first loop), then every ``renew_s``
        in a thread; returns :meth:`release` (for ``Runtime.on_close``)."""
        self.try_acquire()

        def run() -> None:
            while not self._stop.wait(renew_s):
                try:
                    self.try_acquire()
                except Exception:  # never let the thread die; the next attempt retries
                    log.exception("leader lease attempt failed")

        self._thread = threading.Thread(target=run, name="tether-leader", daemon=True)
        self._thread.start()
        return self.release

    def release(self) -> None:
        """Stop renewing and free the row when ours, so a successor need not wait it out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._valid_until = float("-inf")
        t = ct.leader_leases
        try:
            with self.db.begin() as conn:
                conn.execute(delete(t).where(t.c.name == self.name, t.c.holder == self.holder))
        except TetherError as exc:  # it expires on its own
            log.warning("could not release the leader lease: %s", exc.message)

"""The revocation feed: what enforcement points must stop honouring, in commit order.

Two kinds of entry:

* ``task`` — a task ended (closed, expired, revoked): its task token and every credential
  carrying its ``txn`` are dead.
* ``lease`` — one credential was revoked (``lease_id`` is the ``jti`` of a ``jwt``
  credential), for its task's end or on its own (RFC 7009, operator).

Entries are written in the transaction that ends the task or revokes the lease, so a
follower never sees a revocation that did not happen, nor misses one that did. ``seq`` is
the resume cursor. On PostgreSQL, concurrent writers could commit sequence numbers out
of order and a follower at cursor N would then skip a late-committing N-1; a
transaction-scoped advisory lock around the insert makes commit order equal ``seq``
order. Revocations are rare next to authorizations, so serializing them costs little.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, text

from tether.store import credentials_tables as ct
from tether.store.db import Database

_FEED_LOCK_KEY = 0x7E7E_0004  # pg_advisory_xact_lock key for feed appends
NOTIFY_CHANNEL = "tether_revocations"
log = logging.getLogger("tether.credentials")


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    seq: int
    ts: float
    kind: str  # task | lease
    task_id: str
    lease_id: str | None
    audience: str | None
    reason: str
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "task_id": self.task_id,
            "lease_id": self.lease_id,
            "audience": self.audience,
            "reason": self.reason,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class FeedEntry:
    kind: str
    task_id: str
    reason: str
    expires_at: float
    lease_id: str | None = None
    audience: str | None = None


def append(conn: Connection, entries: Sequence[FeedEntry], now: float, *, source: str = "") -> None:
    """Append entries in the caller's transaction (see the module note on ordering).
    ``source`` (the writer's node id) is the NOTIFY payload, so a replica can tell its own
    commits from the others' (:meth:`Feed.listen`)."""
    if not entries:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FEED_LOCK_KEY})
        # Delivered at commit to every replica LISTENing (see Feed.listen): they wake their
        # followers at once instead of at their next poll.
        conn.execute(text("SELECT pg_notify(:c, :s)"), {"c": NOTIFY_CHANNEL, "s": source[:64]})
    conn.execute(
        insert(ct.revocations),
        [
            {
                "ts": now,
                "kind": e.kind,
                "task_id": e.task_id,
                "lease_id": e.lease_id,
                "audience": e.audience,
                "reason": e.reason,
                "expires_at": e.expires_at,
            }
            for e in entries
        ],
    )


class Feed:
    """Read side of the feed, for in-process enforcement points and the HTTP routes.

    ``wait`` blocks until something newer than the cursor was committed by this process
    (woken by :meth:`notify`) or the timeout passes; entries written by other replicas
    are seen on the next read, so followers on a replica poll with a short timeout.
    """

    MAX_PAGE = 1000

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cond = threading.Condition()
        self._generation = 0

    def since(self, cursor: int, limit: int = 500) -> tuple[list[RevocationEvent], int]:
        """Entries with ``seq > cursor`` (at most ``limit``) and the cursor to resume from."""
        limit = max(1, min(limit, self.MAX_PAGE))
        with self._db.read() as conn:
            rows = conn.execute(
                select(ct.revocations)
                .where(ct.revocations.c.seq > cursor)
                .order_by(ct.revocations.c.seq)
                .limit(limit)
            ).all()
        events = [RevocationEvent(**dict(r._mapping)) for r in rows]
        return events, (events[-1].seq if events else cursor)

    def head(self) -> int:
        """The newest cursor: a follower that starts here skips history it does not need."""
        from sqlalchemy import func

        with self._db.read() as conn:
            return int(conn.execute(select(func.max(ct.revocations.c.seq))).scalar() or 0)

    @property
    def generation(self) -> int:
        """Bumped on every local commit that wrote to the feed (cheap change check)."""
        return self._generation

    def changed(self, generation: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :attr:`generation` to move past ``generation``."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != generation, timeout)

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, cursor: int, timeout: float, limit: int = 500) -> tuple[list[RevocationEvent], int]:
        """Like :meth:`since`, but wait up to ``timeout`` seconds for something new."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                generation = self._generation
            events, new_cursor = self.since(cursor, limit)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events, new_cursor
            with self._cond:
                if self._generation == generation:
                    self._cond.wait(remaining)

    def listen(
        self,
        stop: threading.Event,
        on_commit: Callable[[], None] | None = None,
        *,
        own: str | None = None,
    ) -> threading.Thread | None:
        """On PostgreSQL, wake local followers when any replica commits a revocation, and
        call ``on_commit`` when *another* replica did (``own``: this replica's node id, the
        payload of its own commits). That is the reaper's wake: a replica that dies after
        its commit leaves the cleanup to the others, which then start at once rather than
        at their next tick. This replica's own commits wake its reaper from the audit
        listener, after its cut (``credentials.wiring``); heard here, they would wake it in
        the instant between the commit and the cut, where a crash would leave a claim."""
        if self._db.dialect != "postgresql":
            return None
        import psycopg  # local: only a PostgreSQL store needs it

        dsn = re.sub(
            r"^postgres(ql)?\+\w+://",
            "postgresql://",
            self._db.engine.url.render_as_string(hide_password=False),
        )

        def heard(source: str | None) -> None:
            self.notify()
            if on_commit is not None and (source is None or source != own):
                on_commit()

        def run() -> None:
            while not stop.is_set():
                try:
                    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                        heard(None)  # anything committed while we were not listening
                        while not stop.is_set():
                            # A short wait: close() joins this thread, so it must notice `stop` soon.
                            for n in conn.notifies(timeout=0.2, stop_after=1):
                                heard(n.payload)
                except Exception as exc:  # reconnect; followers still poll meanwhile
                    log.warning("revocation LISTEN failed: %s", type(exc).__name__)
                    stop.wait(1.0)

        thread = threading.Thread(target=run, name="tether-revocation-listen", daemon=True)
        thread.start()
        return thread

    def prune(self, now: float, keep_seconds: float) -> int:
        """Drop entries whose subject has expired anyway, ``keep_seconds`` after that."""
        with self._db.begin() as conn:
            res = conn.execute(delete(ct.revocations).where(ct.revocations.c.expires_at < now - keep_seconds))
            return res.rowcount

"""Replica identity: one live process per ``node_id``, checked at start.

``node_id`` names a replica's audit chain (and its lease claims). Two processes with one
id collide on the chain head and fail closed on every write — which looks like generic
``audit_unavailable`` denies. So a replica records itself in ``replica_heartbeats`` at
start and refreshes the row every :data:`HEARTBEAT_S`; a second process whose ``node_id``
has a live heartbeat refuses to start, saying which process holds it and what to change.

A heartbeat counts as dead when it is older than :data:`STALE_AFTER_S`, or when it names
this host and a pid that no longer runs (a ``kill -9``'d broker restarts at once), or this
very process and an instance that was never started or was released.

The same test tells the reaper when the replica that claimed a revocation is gone
(:func:`gone`): a claim names its ``node_id`` and instance (:func:`claimant`), and a
survivor takes over the claim of a dead one at once instead of waiting out the claim's
visibility timeout (``credentials.reaper``).

:class:`FeedFollower` is a replica's own reader of the revocation feed, woken the way every
in-process follower is; it reports how long after their commit revocations reach this
replica (the feed-lag metrics, docs/observability.md).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select, update

from tether.errors import ConfigError, TetherError
from tether.store import credentials_tables as ct
from tether.store.db import Database

if TYPE_CHECKING:
    from tether.credentials.revocation import Feed

log = logging.getLogger("tether")

HEARTBEAT_S = 2.0
STALE_AFTER_S = 10.0
FEED_POLL_S = 1.0  # as often as the feed routes look for other replicas' entries (credentials.api)

_active: set[str] = set()  # instances of this process whose heartbeat runs
_running: dict[str, str] = {}  # node id → its instance in this process, while it runs
_active_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def _dead(row: Any, now: float, host: str) -> bool:
    if now - float(row.seen_at) > STALE_AFTER_S:
        return True
    if row.host != host:
        return False
    if int(row.pid) == os.getpid():
        with _active_lock:
            return str(row.instance) not in _active
    return not _pid_alive(int(row.pid))


def claimant(node_id: str) -> str:
    """What this process's work for ``node_id`` is signed with (a lease claim): the node
    id and, while its heartbeat runs here, its instance — so a claim left by an earlier
    process with the same id is known as dead once that id is taken again."""
    with _active_lock:
        instance = _running.get(node_id)
    return node_id if instance is None else f"{node_id}:{instance}"


def gone(conn: Connection, claimants: Iterable[str]) -> set[str]:
    """The claimants (as :func:`claimant` spells them) whose process no longer runs: no
    heartbeat for the node id (released, or never started), another instance's heartbeat
    (the id was taken again), or a dead one (stale, or a pid gone on this host).

    Wall time, like the heartbeats themselves. A replica that is alive but has missed its
    heartbeats for :data:`STALE_AFTER_S` is counted as gone: what it was doing may then be
    done twice, which the callers' compare-and-sets make harmless."""
    by_node: dict[str, list[tuple[str, str]]] = {}  # node id → (claimant, its instance or "")
    for c in set(claimants):
        node, _, instance = c.rpartition(":") if _looks_like_instance(c) else (c, "", "")
        by_node.setdefault(node, []).append((c, instance))
    if not by_node:
        return set()
    rows = {
        str(r.node_id): r
        for r in conn.execute(select(ct.replicas).where(ct.replicas.c.node_id.in_(sorted(by_node))))
    }
    now, host = time.time(), socket.gethostname()[:256]
    out: set[str] = set()
    for node, named in by_node.items():
        row = rows.get(node)
        for c, instance in named:
            if row is None or (instance and str(row.instance) != instance) or _dead(row, now, host):
                out.add(c)
    return out


def _looks_like_instance(c: str) -> bool:
    # An instance is a uuid4 hex: 32 lowercase hex digits after the last colon.
    tail = c.rpartition(":")[2]
    return c.count(":") >= 1 and len(tail) == 32 and all(ch in "0123456789abcdef" for ch in tail)


class Replica:
    def __init__(self, db: Database, node_id: str, instance: str, clock: Callable[[], float]) -> None:
        self.db = db
        self.node_id = node_id
        self.instance = instance
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    @classmethod
    def claim(cls, db: Database, node_id: str, *, clock: Callable[[], float] = time.time) -> Replica:
        """Record this process as ``node_id``; refuse when another live process is it."""
        host = socket.gethostname()[:256]
        rep = cls(db, node_id, uuid.uuid4().hex, clock)
        for attempt in (1, 2):
            try:
                with db.begin() as conn:
                    row = conn.execute(
                        select(ct.replicas).where(ct.replicas.c.node_id == node_id).with_for_update()
                    ).first()
                    now = clock()
                    if row is not None and not _dead(row, now, host):
                        raise ConfigError(
                            f"node_id `{node_id}` is already live: a replica on `{row.host}` (pid {row.pid}) "
                            f"sent a heartbeat {max(0.0, now - float(row.seen_at)):.1f} s ago; give each "
                            "replica its own `node_id` (in tether.toml or TETHER_NODE_ID), or stop that "
                            f"one — a dead replica's id is free after {STALE_AFTER_S:.0f} s",
                            code="node_id_in_use",
                            field="node_id",
                        )
                    values = {"instance": rep.instance, "host": host, "pid": os.getpid(), "seen_at": now}
                    if row is None:
                        conn.execute(insert(ct.replicas).values(node_id=node_id, started_at=now, **values))
                    else:
                        conn.execute(
                            update(ct.replicas)
                            .where(ct.replicas.c.node_id == node_id)
                            .values(started_at=now, **values)
                        )
                return rep
            except ConfigError:
                raise
            except TetherError:
                if attempt == 2:  # two replicas inserted at once: the loser reads the winner's row
                    raise
        raise AssertionError("unreachable")

    def start(self) -> Callable[[], None]:
        """Start the heartbeat; returns :meth:`release` (for ``Runtime.on_close``)."""
        with _active_lock:
            _active.add(self.instance)
            _running[self.node_id] = self.instance
        self._thread = threading.Thread(target=self._run, name="tether-heartbeat", daemon=True)
        self._thread.start()
        return self.release

    def beat(self) -> bool:
        with self.db.begin() as conn:
            res = conn.execute(
                update(ct.replicas)
                .where(ct.replicas.c.node_id == self.node_id, ct.replicas.c.instance == self.instance)
                .values(seen_at=self.clock())
            )
        return res.rowcount == 1

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                ok = self.beat()
            except Exception as exc:  # the store may be briefly down; the next beat retries
                log.warning("replica heartbeat failed: %s", getattr(exc, "message", exc))
                continue
            if not ok and not self._lost:
                self._lost = True
                log.error(
                    "node_id `%s` was taken over by another process (this one missed its heartbeats); "
                    "its audit writes will fail: give each replica its own node_id",
                    self.node_id,
                )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with _active_lock:
            _active.discard(self.instance)
            if _running.get(self.node_id) == self.instance:
                del _running[self.node_id]
        try:
            with self.db.begin() as conn:
                conn.execute(
                    delete(ct.replicas).where(
                        ct.replicas.c.node_id == self.node_id, ct.replicas.c.instance == self.instance
                    )
                )
        except TetherError as exc:  # the row goes stale on its own
            log.warning("could not release node_id `%s`: %s", self.node_id, exc.message)


class FeedFollower:
    """Follows the revocation feed from its head, as this replica sees it.

    It wakes when :class:`~tether.credentials.revocation.Feed` does — at a local commit, or
    on PostgreSQL when the LISTEN connection hears another replica's commit — and reads
    every :data:`FEED_POLL_S` otherwise (SQLite workers, a lost LISTEN connection). After
    each successful read it calls ``on_poll(now)``; for the entries read, ``on_apply(now,
    their commit times)``. It only measures: the broker decides on the task rows it reads.
    """

    PAGE = 500

    def __init__(
        self,
        feed: Feed,
        *,
        on_apply: Callable[[float, Sequence[float]], None],
        on_poll: Callable[[float], None],
        poll: float = FEED_POLL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feed = feed
        self.on_apply = on_apply
        self.on_poll = on_poll
        self.poll = poll
        self.clock = clock
        self.cursor: int | None = None  # None: not yet at the head
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> int:
        """One read: from the head on the first, then what is new; returns entries applied."""
        if self.cursor is None:
            self.cursor = self.feed.head()  # history is not lag
            self.on_poll(self.clock())
            return 0
        events, self.cursor = self.feed.since(self.cursor, self.PAGE)
        now = self.clock()
        self.on_poll(now)
        if events:
            self.on_apply(now, [e.ts for e in events])
        return len(events)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            generation = self.feed.generation
            try:
                n = self.step()
            except Exception as exc:  # the store may be down: the poll age shows it; retry
                if not failing:
                    log.warning("revocation feed follower: %s", getattr(exc, "message", exc))
                failing = True
                self._stop.wait(self.poll)
                continue
            failing = False
            if n < self.PAGE:
                self.feed.changed(generation, self.poll)

    def start(self) -> Callable[[], None]:
        """Start following; returns :meth:`stop` (for ``Runtime.on_close``)."""
        self._thread = threading.Thread(target=self._run, name="tether-feed-follower", daemon=True)
        self._thread.start()
        return self.stop

    def stop(self) -> None:
        self._stop.set()
        self.feed.notify()  # wakes the wait; other waiters just read once more
        if self._thread is not None:
            self._thread.join(5)

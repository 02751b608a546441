"""SQLite WAL checkpoints off the write path.

With ``synchronous=NORMAL`` a WAL commit does not fsync; a checkpoint (copying the WAL
back into the database file) does, and SQLite runs one inside whichever commit pushes the
WAL past ``wal_autocheckpoint`` pages. On the decision path that commit then takes
milliseconds instead of tens of microseconds: the p99 of an authorize was a checkpoint.
So writers raise the automatic threshold far out of reach (:data:`AUTOCHECKPOINT_PAGES`, a
safety net should this thread stop) and a :class:`Checkpointer` thread with its own
connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` every :data:`INTERVAL_S`. PASSIVE never
waits for readers or writers: it copies what it can and tries again next time, so it
cannot stall a decision. Durability is unchanged: a committed transaction is in the WAL
either way (see docs/architecture.md, "Store").
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from urllib.request import pathname2url

log = logging.getLogger(__name__)

#: Writers checkpoint by themselves only past this many WAL pages (4 KiB each, ~80 MiB):
#: never in normal running, where the thread keeps the WAL far below it.
AUTOCHECKPOINT_PAGES = 20_000
INTERVAL_S = 0.25
#: Under a steady stream of commits a PASSIVE checkpoint never finds the WAL fully copied
#: when a writer begins, so the WAL never starts over; past this many frames the thread
#: follows a complete PASSIVE pass with a RESTART, which holds the write lock only for
#: the few frames committed meanwhile (and gives up at once if a writer holds it).
RESTART_FRAMES = 2_000


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; ``None`` for an in-memory database."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    path = rest[1:] if rest.startswith("/") else rest
    path = path.split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        return None
    return Path(path)


class Checkpointer:
    """A daemon thread checkpointing one SQLite database's WAL until :meth:`stop`."""

    def __init__(self, path: Path, *, interval: float = INTERVAL_S) -> None:
        self.path = path
        self.interval = interval
        #: Checkpoints run, and those that failed (tried again at the next interval).
        self.runs = 0
        self.failures = 0
        #: RESTART checkpoints that went through (each lets the writers start the WAL over).
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tether-wal-checkpoint", daemon=True)

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """One pass: (busy, WAL frames, frames checkpointed) of its last checkpoint."""
        busy, frames, done = _checkpoint(conn, "PASSIVE")
        if not busy and frames >= RESTART_FRAMES and done == frames:
            busy, frames, done = _checkpoint(conn, "RESTART")
            self.restarts += 0 if busy else 1
        self.runs += 1
        return busy, frames, done

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self.interval):
            try:
                if conn is None:
                    # Its own connection: never one of the pool's, never the writer's lock.
                    # mode=rw: a database that was removed is not created again, empty.
                    conn = sqlite3.connect(
                        f"file:{pathname2url(str(self.path))}?mode=rw",
                        uri=True,
                        timeout=0,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                self.checkpoint(conn)
            except sqlite3.Error as exc:
                # A busy or vanished database is the writers' problem to report; this
                # thread tries again, on a fresh connection, next time.
                self.failures += 1
                log.debug("WAL checkpoint of %s failed: %s", self.path, exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def _checkpoint(conn: sqlite3.Connection, mode: str) -> tuple[int, int, int]:
    # fetchall, not fetchone: a statement left unfinished keeps a read transaction open,
    # and the writers could then never start the WAL over from its beginning.
    cur = conn.execute(f"PRAGMA wal_checkpoint({mode})")
    ((busy, frames, done),) = cur.fetchall()
    cur.close()
    return int(busy), int(frames), int(done)

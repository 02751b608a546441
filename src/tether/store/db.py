"""Engine construction and the transaction boundary.

Every failure of the database surfaces as ``Unavailable(code="store_unavailable")`` so
the layers above fail closed without knowing SQLAlchemy's exception tree.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from tether.errors import ConfigError, TetherError, Unavailable
from tether.store.deadline import Watchdog, unbounded
from tether.store.migrations import migrate
from tether.store.wal import AUTOCHECKPOINT_PAGES, Checkpointer, sqlite_path


def _normalize_url(url: str) -> str:
    # psycopg 3 is the driver we ship; plain postgresql:// would pick psycopg2.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is off).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer; busy_timeout turns lock contention
    # between processes into a bounded wait rather than an immediate error.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # Checkpoints run on their own thread (``tether.store.wal``), not inside a commit.
    cur.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(WRITE_LOCK_WAIT_S * 1000)}")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock at BEGIN so a read-then-write transaction cannot fail
    # on lock upgrade; readers use a deferred BEGIN and never block writers (WAL).
    # Straight to the driver: SQLAlchemy's statement machinery around a bare BEGIN cost
    # more than the BEGIN on the decision path. Its errors still surface as SQLAlchemy's,
    # which the layers above turn into ``store_unavailable``.
    driver: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    readonly = conn.get_execution_options().get("tether_readonly")
    statement = "BEGIN" if readonly else "BEGIN IMMEDIATE"
    try:
        if readonly:
            driver.execute(statement)
        else:
            _begin_immediate(driver)
    except sqlite3.Error as exc:
        raise OperationalError(statement, None, exc) from exc


#: How long a writer waits for another process's write lock (the connection's busy_timeout).
WRITE_LOCK_WAIT_S = 5.0
_FIRST_PAUSE_S = 20e-6
_MAX_PAUSE_S = 500e-6


def _begin_immediate(driver: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for another process's write lock in short steps.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15… ms between tries. A write here lasts
    a fraction of a millisecond, so under ``tether serve --workers 2`` each worker spent
    40-47% of its time asleep in it while the lock was long free (docs/architecture.md,
    "Several workers on one SQLite file"). Here the handler is off for the BEGIN and the
    retry pauses start at 20 µs, doubling to at most 0.5 ms, for the same 5 s in all.
    """
    driver.execute("PRAGMA busy_timeout=0")
    try:
        deadline = 0.0
        pause = _FIRST_PAUSE_S
        while True:
            try:
                driver.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                if not deadline:
                    deadline = now + WRITE_LOCK_WAIT_S
                elif now >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE_S)
    finally:
        driver.execute(f"PRAGMA busy_timeout={int(WRITE_LOCK_WAIT_S * 1000)}")


class Database:
    """One engine plus helpers; the only place that catches SQLAlchemy errors."""

    def __init__(self, url: str, *, pool_size: int = 10, timeout_ms: int | None = None) -> None:
        """``timeout_ms`` bounds each use of the store: connecting, waiting for a pooled
        connection, waiting on a lock, running a statement, and (PostgreSQL) the whole
        checkout of a connection (``tether.store.deadline``). ``None``: no bound, for
        tools that run long reads (exports) on purpose."""
        self.url = _normalize_url(url)
        self.timeout = None if timeout_ms is None else timeout_ms / 1000
        #: Called with the error code of every store failure (the metrics count them).
        self.error_hooks: list[Callable[[str], None]] = []
        self.watchdog: Watchdog | None = None
        #: SQLite: the WAL checkpoint thread of a long-running process (:meth:`start_checkpoints`).
        self.checkpointer: Checkpointer | None = None
        try:
            if self.url.startswith("sqlite"):
                # SQLite cannot freeze the way a server can; its only wait is for another
                # process's write lock, kept at 5 s so busy CI machines do not fail writes.
                self.engine: Engine = create_engine(
                    self.url,
                    connect_args={"check_same_thread": False, "timeout": 5},
                    **({} if self.timeout is None else {"pool_timeout": self.timeout}),
                )
                event.listen(self.engine, "connect", _sqlite_pragmas)
                event.listen(self.engine, "begin", _sqlite_begin)
                self.dialect = "sqlite"
            elif self.url.startswith("postgresql"):
                bounded: dict[str, Any] = {}
                if timeout_ms is not None:
                    bounded = {
                        "pool_timeout": self.timeout,
                        "connect_args": {
                            # libpq's floor is 2 s; the watchdog bounds the rest of a checkout.
                            "connect_timeout": max(2, math.ceil(timeout_ms / 1000)),
                            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
                        },
                    }
                self.engine = create_engine(
                    self.url,
                    pool_size=pool_size,
                    max_overflow=20,
                    # A ping before the checkout event could itself hang on a frozen server;
                    # with a bound, a dead connection fails its first use instead and the pool
                    # is invalidated (one 503, then fresh connections).
                    pool_pre_ping=timeout_ms is None,
                    **bounded,
                )
                if self.timeout is not None:
                    self.watchdog = Watchdog(self.timeout)
                    self.watchdog.install(self.engine)
                self.dialect = "postgresql"
            else:
                raise ConfigError(f"unsupported store url `{url}`", code="config_invalid", field="store")
        except SQLAlchemyError as exc:
            raise ConfigError(
                f"invalid store url: {exc.__class__.__name__}", code="config_invalid", field="store"
            ) from exc

    def migrate(self) -> list[str]:
        """Apply pending schema revisions (under the migration lock); return their ids."""
        # Schema changes may wait for another replica's migration and take their time: not
        # under the request budget (a separate engine without the bounded options).
        if self.timeout is None or self.dialect != "postgresql":
            with self.guard(), unbounded():
                return migrate(self.engine)
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with self.guard():
                return migrate(engine)
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Map database failures to a fail-closed ``Unavailable``."""
        try:
            yield
        except TetherError:
            raise
        except SQLAlchemyError as exc:
            self.note_error("store_unavailable")
            raise Unavailable(
                "the store is unavailable; retry later or check the database", code="store_unavailable"
            ) from exc

    def note_error(self, code: str) -> None:
        for hook in self.error_hooks:
            hook(code)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A read-write transaction; commits on success, rolls back on any error."""
        with self.guard(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.guard(), self.engine.connect() as conn:
            conn = conn.execution_options(tether_readonly=True)
            yield conn

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError:
            return False

    def start_checkpoints(self) -> None:
        """SQLite file stores: checkpoint the WAL on a thread of its own from now on (a
        long-running process calls this; a short command leaves it to the last close)."""
        path = sqlite_path(self.url) if self.dialect == "sqlite" else None
        if path is not None and self.checkpointer is None:
            self.checkpointer = Checkpointer(path).start()

    def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        if self.watchdog is not None:
            self.watchdog.close()
        self.engine.dispose()

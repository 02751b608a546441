"""Engine construction and the transaction boundary.

Every failure of the database surfaces as ``Unavailable(code="store_unavailable")`` so
the layers above fail closed without knowing SQLAlchemy's exception tree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from tether.errors import ConfigError, TetherError, Unavailable
from tether.store.migrations import migrate


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
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock at BEGIN so a read-then-write transaction cannot fail
    # on lock upgrade; readers use a deferred BEGIN and never block writers (WAL).
    if conn.get_execution_options().get("tether_readonly"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine plus helpers; the only place that catches SQLAlchemy errors."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = _normalize_url(url)
        try:
            if self.url.startswith("sqlite"):
                self.engine: Engine = create_engine(
                    self.url,
                    connect_args={"check_same_thread": False, "timeout": 5},
                )
                event.listen(self.engine, "connect", _sqlite_pragmas)
                event.listen(self.engine, "begin", _sqlite_begin)
                self.dialect = "sqlite"
            elif self.url.startswith("postgresql"):
                self.engine = create_engine(
                    self.url, pool_size=pool_size, max_overflow=20, pool_pre_ping=True
                )
                self.dialect = "postgresql"
            else:
                raise ConfigError(f"unsupported store url `{url}`", code="config_invalid", field="store")
        except SQLAlchemyError as exc:
            raise ConfigError(
                f"invalid store url: {exc.__class__.__name__}", code="config_invalid", field="store"
            ) from exc

    def migrate(self) -> list[str]:
        """Apply pending schema revisions (under the migration lock); return their ids."""
        with self.guard():
            return migrate(self.engine)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Map database failures to a fail-closed ``Unavailable``."""
        try:
            yield
        except TetherError:
            raise
        except SQLAlchemyError as exc:
            raise Unavailable(
                "the store is unavailable; retry later or check the database", code="store_unavailable"
            ) from exc

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

    def dispose(self) -> None:
        self.engine.dispose()

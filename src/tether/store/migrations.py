"""Schema revisions (Alembic), applied under a lock, and the checks that keep them honest.

The revisions live in ``tether/store/schema/versions``; the table definitions in the
``*_tables`` modules are what the code expects. Three rules hold them together:

* the broker applies pending revisions at start (``Runtime.start``) and ``tether store
  upgrade`` does the same by hand, both under one lock: a PostgreSQL advisory lock, or
  an ``flock`` on ``<db file>.migrate-lock`` for SQLite, so replicas starting at once never
  run a revision twice;
* a database at a revision this code does not know was written by a newer Tether: the
  broker refuses to start on it (``store_schema_newer``) instead of guessing;
* :func:`drift` compares the tables with a migrated database (Alembic's autogenerate
  comparison, as ``alembic check`` does); the test suite fails on any difference, on
  SQLite and PostgreSQL, so a table change without its revision cannot land.

Add a revision with ``make revision m="what changes"`` (:mod:`tether.store.revise`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, MetaData, inspect, text

from tether.errors import ConfigError, Unavailable

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic is imported where it is used: it costs every CLI command ~0.2 s of imports, and
# only the broker's start and `tether store` need it.

SCRIPT_LOCATION = str(Path(__file__).parent / "schema")
VERSION_TABLE = "alembic_version"
#: The pre-Alembic migrator's bookkeeping; the baseline revision adopts and drops it.
LEGACY_TABLE = "schema_migrations"

# Any constant works; it only has to be the same for every replica of this schema.
_PG_MIGRATION_LOCK = 0x7E7E_0001
_SQLITE_LOCK_WAIT_S = 60.0


def target_metadata() -> MetaData:
    """The live table definitions of every module (importing them fills ``metadata``)."""
    from tether.store import audit_tables, credentials_tables, gateway_tables, identity_tables, tables

    del audit_tables, credentials_tables, gateway_tables, identity_tables
    return tables.metadata


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic filter: the legacy bookkeeping table is not part of the schema."""
    return not (type_ == "table" and name == LEGACY_TABLE)


def config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    # rNNNN_<slug>.py, ids "0001", "0002", …: readable, ordered, mypy-importable names.
    cfg.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    # Parsed once per process: the revision files do not change under a running broker.
    return ScriptDirectory.from_config(config())


@functools.cache
def _known_revisions() -> frozenset[str]:
    return frozenset(rev.revision for rev in script().walk_revisions())


def head() -> str:
    h = script().get_current_head()
    assert h is not None, "the schema has no revisions"
    return h


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where a database stands against this code's revisions."""

    dialect: str
    current: str | None  # revision in alembic_version; None: not under Alembic yet
    head: str
    pending: list[str] = field(default_factory=list)  # oldest first
    legacy: bool = False  # made by the pre-Alembic migrator; the baseline adopts it
    empty: bool = False  # no tables at all

    @property
    def state(self) -> str:
        if self.current is not None and self.current not in _known_revisions():
            return "newer"
        if not self.pending:
            return "up_to_date"
        return "empty" if self.empty else "pending"

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "dialect": self.dialect,
            "current": self.current,
            "head": self.head,
            "pending": list(self.pending),
            "legacy": self.legacy,
        }


def _status(conn: Connection) -> SchemaStatus:
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn)
    current = ctx.get_current_revision()
    sd = script()
    h = head()
    names = set(inspect(conn).get_table_names())
    pending: list[str] = []
    if current is None or current in _known_revisions():
        # iterate_revisions walks head → current; pending is reported oldest first.
        pending = [r.revision for r in sd.iterate_revisions(h, current or "base")][::-1]
    return SchemaStatus(
        dialect=conn.dialect.name,
        current=current,
        head=h,
        pending=pending,
        legacy=current is None and LEGACY_TABLE in names,
        empty=not names,
    )


def newer_error(st: SchemaStatus) -> ConfigError:
    return ConfigError(
        f"the database schema is at revision `{st.current}`, which this Tether does not know "
        f"(its newest is `{st.head}`): a newer Tether wrote it. Run that version (or newer), "
        "or restore a backup taken before it ran; nothing was changed",
        code="store_schema_newer",
        field="store",
    )


def status(engine: Engine) -> SchemaStatus:
    with engine.connect() as conn:
        return _status(conn)


def migrate(engine: Engine) -> list[str]:
    """Apply every pending revision under the migration lock; return the ids applied.

    Raises ``ConfigError(code="store_schema_newer")`` when the database is ahead of this
    code, before touching anything.
    """
    with _locked(engine) as conn:
        st = _status(conn)
        conn.rollback()  # the status read must not hold a transaction open across revisions
        if st.state == "newer":
            raise newer_error(st)
        if not st.pending:
            return []
        from alembic import command

        command.upgrade(config(conn), "head")
        conn.commit()
        return st.pending


def drift(engine: Engine) -> list[Any]:
    """Differences between the table definitions and a migrated database (empty: none)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include_object})
        diffs: list[Any] = compare_metadata(ctx, target_metadata())
        return diffs


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """One connection holding the migration lock for the whole upgrade."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
        return
    db_file = engine.url.database
    with _file_lock(db_file), engine.connect() as conn:
        yield conn


@contextlib.contextmanager
def _file_lock(db_file: str | None) -> Iterator[None]:
    # An in-memory database belongs to one process: nothing to serialize.
    if not db_file or db_file == ":memory:" or db_file.startswith("file::memory:"):
        yield
        return
    path = db_file + ".migrate-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + _SQLITE_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"another process has held the migration lock `{path}` for "
                        f"{_SQLITE_LOCK_WAIT_S:.0f}s; stop it or remove a stuck one, then retry",
                        code="store_unavailable",
                    ) from exc
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

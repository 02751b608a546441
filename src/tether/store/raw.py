"""Hot-path statements sent straight to the DB-API driver, inside the caller's transaction.

SQLAlchemy Core costs tens of microseconds per statement in compilation-cache lookups,
parameter processing and result wrapping; on SQLite that is more than the statement
itself. The few statements every decision runs go through here instead: written once
with ``:name`` parameters, translated for psycopg (``%(name)s``), executed on the
connection's own DB-API cursor so they join its transaction. Driver errors are raised as
SQLAlchemy's ``DBAPIError`` so the layers above map them (fail closed) as before.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

_PARAM = re.compile(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class Statement:
    sqlite: str
    postgresql: str


def statement(sql: str) -> Statement:
    """``sql`` with ``:name`` parameters, for both drivers (no literal ``%`` allowed)."""
    if "%" in sql:
        raise ValueError("raw statements may not contain `%`")
    return Statement(sql, _PARAM.sub(r"%(\1)s", sql))


def execute(conn: Connection, stmt: Statement, params: Mapping[str, Any]) -> Any:
    """Run ``stmt`` in ``conn``'s transaction; returns the DB-API cursor."""
    raw = conn.connection.driver_connection
    if raw is None:  # pragma: no cover - a detached connection
        raise DBAPIError(stmt.sqlite, dict(params), Exception("no driver connection"))
    sql = stmt.sqlite if conn.dialect.name == "sqlite" else stmt.postgresql
    cur = raw.cursor()
    try:
        cur.execute(sql, params)
    except conn.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
        # As SQLAlchemy itself would: a lost connection is invalidated (never handed out
        # again by the pool) and the error says so (the audit chain maps it to
        # store_unavailable; anything else stays the statement's failure).
        gone = bool(conn.dialect.is_disconnect(exc, raw, cur))
        with contextlib.suppress(Exception):
            cur.close()
        if gone:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            dict(params),
            exc,
            conn.dialect.dbapi.Error,  # type: ignore[union-attr]
            connection_invalidated=gone,
            dialect=conn.dialect,
        ) from exc
    return cur


def first(conn: Connection, stmt: Statement, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first row as a column → value mapping, or None."""
    cur = execute(conn, stmt, params)
    try:
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))
    finally:
        cur.close()


def scalar(conn: Connection, stmt: Statement, params: Mapping[str, Any]) -> Any:
    cur = execute(conn, stmt, params)
    try:
        row = cur.fetchone()
        return None if row is None else row[0]
    finally:
        cur.close()


def rowcount(conn: Connection, stmt: Statement, params: Mapping[str, Any]) -> int:
    cur = execute(conn, stmt, params)
    try:
        return int(cur.rowcount)
    finally:
        cur.close()


_SAVEPOINT = statement("SAVEPOINT tether_raw")
_RELEASE = statement("RELEASE SAVEPOINT tether_raw")
_ROLLBACK_TO = statement("ROLLBACK TO SAVEPOINT tether_raw")


@contextlib.contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """``conn.begin_nested()`` in three driver statements: what the block wrote is undone
    if it raises, and the enclosing transaction goes on. Not re-entrant (one name)."""
    execute(conn, _SAVEPOINT, {}).close()
    try:
        yield
    except BaseException:
        # If the store itself is gone this raises instead (mapped to store_unavailable
        # above, the block's error as its context): the transaction cannot commit anyway.
        execute(conn, _ROLLBACK_TO, {}).close()
        raise
    execute(conn, _RELEASE, {}).close()

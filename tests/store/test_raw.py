"""Hot-path driver statements (``tether.store.raw``) keep the transaction semantics of SQLAlchemy's."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tether.store import raw
from tether.store.db import Database

_INSERT = raw.statement("INSERT INTO t (v) VALUES (:v)")


@pytest.fixture
def db(store_url):
    d = Database(store_url)
    with d.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS t"))
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    yield d
    d.dispose()


def _values(db: Database) -> list[int]:
    with db.read() as conn:
        return [int(r[0]) for r in conn.execute(text("SELECT v FROM t ORDER BY v"))]


def test_savepoint_undoes_only_the_failed_block(db):
    """A block that raises is rolled back to its savepoint; the enclosing transaction commits the rest."""
    with db.begin() as conn:
        raw.execute(conn, _INSERT, {"v": 1}).close()
        with pytest.raises(RuntimeError), raw.savepoint(conn):
            raw.execute(conn, _INSERT, {"v": 2}).close()
            raise RuntimeError("effect failed")
        with raw.savepoint(conn):
            raw.execute(conn, _INSERT, {"v": 3}).close()
    assert _values(db) == [1, 3]


def test_savepoint_recovers_from_a_failed_statement(db):
    """A statement the database refuses inside the block leaves the outer transaction usable
    (PostgreSQL aborts the whole transaction unless it is rolled back to the savepoint)."""
    bad = raw.statement("INSERT INTO missing_table (v) VALUES (:v)")
    with db.begin() as conn:
        with pytest.raises(Exception, match="missing_table"), raw.savepoint(conn):
            raw.execute(conn, bad, {"v": 9}).close()
        raw.execute(conn, _INSERT, {"v": 4}).close()
    assert _values(db) == [4]


def test_outer_rollback_discards_released_savepoints(db):
    """Released savepoint work is still part of the transaction: an outer failure undoes it."""
    with pytest.raises(RuntimeError), db.begin() as conn:
        with raw.savepoint(conn):
            raw.execute(conn, _INSERT, {"v": 5}).close()
        raise RuntimeError("later failure")
    assert _values(db) == []

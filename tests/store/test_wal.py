"""The SQLite WAL is checkpointed by its own thread, never inside a decision's commit."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from tether.store.db import Database
from tether.store.wal import AUTOCHECKPOINT_PAGES, Checkpointer, sqlite_path


def _wait(cond: object, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_writers_leave_checkpoints_to_the_thread(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with db.begin() as conn:
            got = conn.execute(text("PRAGMA wal_autocheckpoint")).scalar()
        assert got == AUTOCHECKPOINT_PAGES
    finally:
        db.dispose()


def test_steady_writes_let_the_wal_start_over(tmp_path: Path) -> None:
    # Under a stream of commits a PASSIVE checkpoint alone never finds the WAL fully
    # copied when a writer begins: without the RESTART step the WAL only ever grows.
    db = Database(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with db.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        checkpointer = Checkpointer(tmp_path / "s.db", interval=0.02).start()

        def write_until_restart() -> bool:
            for _ in range(500):
                with db.begin() as conn:
                    conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": "x" * 3000})
            return checkpointer.restarts > 0

        assert _wait(write_until_restart), (
            f"no RESTART in {checkpointer.runs} passes ({checkpointer.failures} failed)"
        )
        checkpointer.stop()
    finally:
        db.dispose()


def test_a_removed_database_is_not_created_again(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    checkpointer = Checkpointer(missing, interval=0.01).start()
    try:
        assert _wait(lambda: checkpointer.failures >= 2)
        assert not missing.exists()
    finally:
        checkpointer.stop()


def test_dispose_stops_the_thread(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 's.db'}")
    db.start_checkpoints()
    checkpointer = db.checkpointer
    assert checkpointer is not None and checkpointer._thread.is_alive()
    db.dispose()
    assert not checkpointer._thread.is_alive()
    assert db.checkpointer is None


def test_memory_and_server_stores_have_no_checkpointer() -> None:
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite:////var/lib/tether/tether.db") == Path("/var/lib/tether/tether.db")
    assert sqlite_path("sqlite:///rel/t.db?timeout=3") == Path("rel/t.db")


def test_checkpoint_reports_frames_copied(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (v TEXT)")
    for _ in range(20):
        conn.execute("INSERT INTO t VALUES ('x')")
    busy, frames, done = Checkpointer(path).checkpoint(conn)
    assert (busy, frames == done) == (0, True) and frames > 0
    conn.close()

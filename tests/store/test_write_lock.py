"""SQLite writers wait for another process's write lock in short steps, within a bound.

The other process is a real one (a child ``python`` holding ``BEGIN IMMEDIATE`` on the
same file), as under ``tether serve --workers N``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tether.errors import Unavailable
from tether.store import db as store_db
from tether.store.db import Database

_HOLDER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
c.execute("COMMIT")
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Database, Path]]:
    path = tmp_path / "s.db"
    db = Database(f"sqlite:///{path}")
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    yield db, path
    db.dispose()


@pytest.fixture
def holder(store: tuple[Database, Path]) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the file's write lock until a line arrives on its stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(store[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "held\n", f"holder did not take the lock: {proc.stderr.read() if proc.stderr else ''}"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""


def test_a_writer_waits_for_another_processs_lock_then_writes(
    store: tuple[Database, Path], holder: subprocess.Popen[str]
) -> None:
    db, _ = store
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with db.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert not done.wait(0.3), f"the writer did not wait for the lock: {errors}"
    release(holder)
    assert done.wait(10), "the writer did not get the lock after it was released"
    writer.join()
    assert errors == []
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1


def test_a_lock_held_past_the_bound_is_store_unavailable(
    store: tuple[Database, Path], holder: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = store
    monkeypatch.setattr(store_db, "WRITE_LOCK_WAIT_S", 0.3)
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught, db.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    waited = time.monotonic() - started
    assert caught.value.code == "store_unavailable"
    assert 0.3 <= waited < 5, waited
    release(holder)
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0


def test_statements_inside_the_transaction_keep_the_busy_timeout(store: tuple[Database, Path]) -> None:
    # Only the BEGIN waits in short steps: anything later (a read-only connection's
    # statements too) still has SQLite's own bounded wait.
    db, _ = store
    with db.begin() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    with db.read() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000

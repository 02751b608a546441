"""Copies of a SQLite store: online backup, integrity check, and swapping a copy in.

The copy uses SQLite's online backup API (``sqlite3.Connection.backup``): it reads a
consistent snapshot page by page while the broker keeps writing (WAL), so a backup never
stops the broker and never catches half a transaction. A copy is written next to its
destination and renamed into place, so a crash leaves either the old file or the whole new
one, never a torn file.

PostgreSQL stores are backed up with ``pg_dump`` (see docs/operations.md); the code here
only reads their chain heads, for ``tether store check``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from tether.errors import Conflict, InvalidRequest, Unavailable
from tether.store import tables as t
from tether.store import wal
from tether.store.db import Database

#: Tables every Tether store has, whatever its revision (a file without them is no store).
_REQUIRED_TABLES = ("tasks", "audit_events", "audit_chains", "signing_keys")


@dataclass(frozen=True, slots=True)
class ChainHead:
    chain: str
    seq: int
    hash: str


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or ``None`` for another dialect."""
    if not url.startswith("sqlite"):
        return None
    path = wal.sqlite_path(url)
    if path is None:
        raise InvalidRequest(f"`{url}` names no database file", code="backup_unsupported")
    return path


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.absolute()}"


@contextlib.contextmanager
def _connect(path: Path, *, readonly: bool) -> Iterator[sqlite3.Connection]:
    uri = f"file:{path.absolute()}?mode={'ro' if readonly else 'rwc'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise Unavailable(f"cannot open `{path}`: {exc}", code="backup_failed") from None
    try:
        yield conn
    finally:
        conn.close()


def _copy(source: Path, dest: Path) -> None:
    """Online copy of ``source`` into a new file ``dest`` (0600: it holds the encrypted
    signing keys and the audit log)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    with _connect(source, readonly=True) as src, _connect(dest, readonly=False) as dst:
        try:
            # pages=-1: one step, under one read snapshot; the broker's writers only wait
            # for the WAL checkpoint, never for the copy.
            src.backup(dst, pages=-1)
            # A single self-contained file: no -wal beside it to lose in transit.
            dst.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:
            raise Unavailable(f"backup of `{source}` failed: {exc}", code="backup_failed") from None


def check_file(path: Path) -> None:
    """Refuse a file that is not an intact Tether store (``backup_invalid``)."""
    if not path.is_file():
        raise InvalidRequest(f"`{path}` is not a file", code="backup_invalid")
    with _connect(path, readonly=True) as conn:
        try:
            ok = conn.execute("PRAGMA integrity_check").fetchone()
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise InvalidRequest(f"`{path}` is not a SQLite database: {exc}", code="backup_invalid") from None
    if not ok or ok[0] != "ok":
        raise InvalidRequest(f"`{path}` fails SQLite's integrity check: {ok}", code="backup_invalid")
    missing = [n for n in _REQUIRED_TABLES if n not in names]
    if missing:
        raise InvalidRequest(
            f"`{path}` is not a Tether store (no `{'`, `'.join(missing)}` table)", code="backup_invalid"
        )


def backup_sqlite(source: Path, dest: Path, *, force: bool = False) -> None:
    """Copy the live store ``source`` to ``dest`` (atomically; refuses to overwrite)."""
    if not source.is_file():
        raise Unavailable(f"the store `{source}` does not exist", code="backup_failed")
    if dest.exists() and not force:
        raise Conflict(f"`{dest}` exists; choose another file or pass --force", code="backup_exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        _copy(source, tmp)
        check_file(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def restore_sqlite(backup: Path, target: Path) -> Path | None:
    """Put ``backup`` in place of the store ``target``; the store it replaces is kept as
    ``<target>.before-restore-<time>`` (returned; ``None`` when there was none).

    The caller holds the state directory's instance lock: no broker has the file open.
    """
    check_file(backup)
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept: Path | None = None
    tmp = target.with_name(f".{target.name}.{os.getpid()}.restoring")
    try:
        _copy(backup, tmp)
        with _connect(tmp, readonly=False) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # what the broker runs it in
        if target.exists():
            # Renamed, not copied through SQLite: the store being replaced may be the
            # damaged one. Its -wal moves with it (SQLite finds it by name); -shm is only
            # an index of the -wal and is rebuilt.
            kept = target.with_name(f"{target.name}.before-restore-{stamp}")
            os.replace(target, kept)
            wal = Path(f"{target}-wal")
            if wal.exists():
                os.replace(wal, Path(f"{kept}-wal"))
        Path(f"{target}-shm").unlink(missing_ok=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return kept


def chain_heads(db: Database) -> list[ChainHead]:
    """The head of every audit chain: a backup's point in each writer's history."""
    c = t.audit_chains.c
    with db.read() as conn:
        rows = conn.execute(select(c.chain, c.head_seq, c.head_hash).order_by(c.chain)).all()
    return [ChainHead(str(r[0]), int(r[1]), str(r[2])) for r in rows]

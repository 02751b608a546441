"""The fast pass of ``verify``: the database assembles each row's canonical body, so the
rows that are intact (nearly all of them) cost a hash and a compare, not a parse.

A pass only ever *vouches*: ``fast_prefix`` returns the longest run of events 1..n that
links, hashes and matches the checkpoints, and ``verify``'s exact walk (``row_hash``, which
has the last word) re-reads from n + 1 and names whatever break it finds. A row a pass
cannot vouch for — a NULL piece, a value of an unexpected type, a timestamp the database
spells differently from Python — only ends the fast run early; it is never a verdict.

Why vouching is sound: the body a pass assembles is valid JSON with the 15 fields in their
fixed order, every string escaped by the database's own JSON quoting (an injective
encoding; SQLite prints ``prev_hash`` unquoted, which is exact because a run is vouched for
only where every prev_hash equals a hash before it, 64 hex digits) and ``ts`` in an exact
spelling. If its SHA-256 equals the stored hash, it *is*
the body the writer hashed (the canonical form of the original event), and parsing it gives
back the original fields: the row holds exactly what was written.

SQLite: ``json_object`` escapes strings exactly as ``row_hash`` does (a test pins it);
Python formats the float ``ts``, spells the type and version after it, and hashes.
PostgreSQL: the server assembles *and* hashes (``to_json``, ``sha256``) and checks the links
with a window over the seq order; only the first row it cannot vouch for comes back
(``ts::text`` is exact with ``extra_float_digits`` above 0, and a text that would not read
back as the same double is not vouched for).

Ranges: a long chain is split into seq ranges verified at the same time on their own
connections: on SQLite each in a process of its own (``tether.audit.rangescan``: the
hashing is Python, so threads would take turns on the GIL), on PostgreSQL in threads (the
server does the work). Each range is verified given nothing but its own rows; the ranges are then joined:
range i + 1 counts only if range i was vouched for to its last seq and the first row of
range i + 1 links to that row's hash. So a tampered row inside a range or at a boundary
ends the fast run exactly where a single pass would have ended it. On PostgreSQL every
range reads the verifying transaction's exported snapshot; on SQLite each range reads its
own (committed events are never changed, and the ranges stop at the last seq the verifying
snapshot holds, so they read the same rows).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from tether.audit import rangescan
from tether.audit.checkpoint import Checkpoint
from tether.audit.event import GENESIS_HASH

#: Fewest events worth a range of its own (a process or a connection costs a few ms).
MIN_RANGE = 50_000
_TOP = 2**62  # "no upper bound" for the last range (rows beyond the planned top still count)
_SCRIPT = Path(rangescan.__file__)


def _pg_str(col: str) -> str:
    return f"coalesce(to_json({col})::text, 'null')"


# The same layout assembled by PostgreSQL (``to_json`` of text escapes as ``row_hash``
# does: \" \\ \b \f \n \r \t, other controls as lowercase \u00xx, the rest literal).
_PG_BODY = (
    "'{\"agent\":' || " + _pg_str("agent") + " || ',\"chain\":' || " + _pg_str("chain")
    + " || ',\"decision_id\":' || " + _pg_str("decision_id")
    + " || ',\"delegator\":' || " + _pg_str("delegator")
    + " || ',\"lease_id\":' || " + _pg_str("lease_id")
    + " || ',\"parent_task_id\":' || " + _pg_str("parent_task_id")
    + " || ',\"payload\":' || payload || ',\"prev_hash\":' || " + _pg_str("prev_hash")
    + " || ',\"root_task_id\":' || " + _pg_str("root_task_id")
    + " || ',\"seq\":' || seq::text || ',\"task_id\":' || " + _pg_str("task_id")
    + " || ',\"trace_id\":' || " + _pg_str("trace_id")
    + " || ',\"ts\":' || ts::text || ',\"type\":' || " + _pg_str("type")
    + " || ',\"v\":' || v::text || '}'"
)  # fmt: skip
# The first seq of [lo, hi] the server cannot vouch for (its hash, its place after the
# previous row, its link to it, a checkpoint it contradicts, a ts whose text is not exact),
# and the last seq present. Constant SQL; every value is a bound parameter.
PG_RANGE = (
    "SELECT min(seq) FILTER (WHERE bad), max(seq) FROM ("  # noqa: S608
    "SELECT seq, (encode(sha256(convert_to(" + _PG_BODY + ", 'UTF8')), 'hex') IS DISTINCT FROM hash"
    " OR coalesce(lag(seq) OVER w + 1, %(lo)s) <> seq"
    " OR coalesce(lag(hash) OVER w <> prev_hash, false)"
    " OR ts::text::float8 IS DISTINCT FROM ts"
    " OR seq = ANY(%(badcp)s::bigint[])) AS bad"
    " FROM audit_events WHERE chain = %(c)s AND seq >= %(lo)s AND seq <= %(hi)s"
    " WINDOW w AS (ORDER BY seq)) AS r"
)
_PG_ENDS = "SELECT seq, prev_hash, hash FROM audit_events WHERE chain = %(c)s AND seq IN (%(lo)s, %(last)s)"
_PG_BAD_CHECKPOINTS = (
    "SELECT c.s FROM unnest(%(s)s::bigint[], %(h)s::text[]) AS c(s, h) "
    "JOIN audit_events e ON e.chain = %(c)s AND e.seq = c.s WHERE e.hash <> c.h"
)
_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f-]+$")


@dataclass(frozen=True, slots=True)
class Run:
    """What one scan of seqs ``lo``..``hi`` vouched for."""

    lo: int
    first_prev: str | None  # prev_hash of the row at ``lo`` (None: nothing vouched for)
    last: int  # last seq vouched for (``lo - 1``: none)
    last_hash: str
    whole: bool  # every seq of the range vouched for

    @classmethod
    def none(cls, lo: int) -> Run:
        return cls(lo, None, lo - 1, GENESIS_HASH, False)


def join(runs: Sequence[Run]) -> tuple[int, str]:
    """``(n, hash of event n)`` for runs of consecutive ranges (the first starting at 1)."""
    count, prev = 0, GENESIS_HASH
    for run in runs:
        if run.lo != count + 1 or run.last < run.lo or run.first_prev != prev:
            break
        count, prev = run.last, run.last_hash
        if not run.whole:
            break
    return count, prev


# -- SQLite ------------------------------------------------------------------------------
def _sqlite_file(conn: Connection) -> str | None:
    """The database file other processes can open (None: in memory)."""
    db = conn.engine.url.database
    if not db or db == ":memory:" or "mode=memory" in str(conn.engine.url) or db.startswith("file:"):
        return None
    return os.path.abspath(db)


def spawn_range(
    path: str, chain: str, lo: int, hi: int, cps: Mapping[int, Sequence[str]], *, floor: bool = False
) -> subprocess.Popen[bytes]:
    """Start verifying one range in a process of its own (stdlib only: -I -S, no site);
    ``floor``: only read it, the way a scan does (for the benchmark)."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(_SCRIPT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    cp_hashes = {str(k): list(v) for k, v in cps.items()}
    req = {"db": path, "chain": chain, "lo": lo, "hi": hi, "cps": cp_hashes, "floor": floor}
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(req).encode())
        proc.stdin.close()
    except OSError:  # it died at once: its range will vouch for nothing
        pass
    return proc


def read_answer(proc: subprocess.Popen[bytes]) -> bytes:
    """All a range process wrote, once it has exited (its stdin is already closed)."""
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    proc.wait()
    return out


def _collect(proc: subprocess.Popen[bytes], lo: int) -> Run:
    """A range process's answer; a process that failed vouches for nothing."""
    try:
        out = read_answer(proc)
        first_prev, last, last_hash, whole = json.loads(out)
        if proc.returncode != 0 or not isinstance(last, int):
            return Run.none(lo)
        return Run(lo, first_prev, last, str(last_hash), bool(whole)) if last >= lo else Run.none(lo)
    except (OSError, ValueError, TypeError):
        return Run.none(lo)


def _as_run(lo: int, r: rangescan.Result) -> Run:
    first_prev, last, last_hash, whole = r
    return Run(lo, first_prev, last, last_hash, whole) if last >= lo else Run.none(lo)


# -- PostgreSQL --------------------------------------------------------------------------
def scan_pg(cur: Any, chain: str, lo: int, hi: int, badcp: Sequence[int]) -> Run:
    """The server's verdict on seqs ``lo``..``hi`` (``cur``: a psycopg cursor in the snapshot)."""
    cur.execute(PG_RANGE, {"c": chain, "lo": lo, "hi": hi, "badcp": list(badcp)})
    bad, top = cur.fetchone()
    if top is None:
        return Run.none(lo)
    last = int(bad) - 1 if bad is not None else int(top)
    if last < lo:
        return Run.none(lo)
    cur.execute(_PG_ENDS, {"c": chain, "lo": lo, "last": last})
    ends = {int(r[0]): (str(r[1]), str(r[2])) for r in cur.fetchall()}
    if lo not in ends or last not in ends:  # pragma: no cover - same snapshot, same rows
        return Run.none(lo)
    return Run(lo, ends[lo][0], last, ends[last][1], bad is None and last >= hi)


def _pg_bad_checkpoints(cur: Any, chain: str, cps: Mapping[int, Sequence[Checkpoint]]) -> list[int]:
    pairs = [(s, cp.hash) for s, group in cps.items() for cp in group]
    if not pairs:
        return []
    cur.execute(_PG_BAD_CHECKPOINTS, {"c": chain, "s": [p[0] for p in pairs], "h": [p[1] for p in pairs]})
    return sorted({int(r[0]) for r in cur.fetchall()})


@contextlib.contextmanager
def _pg_cursor(engine: Engine, snapshot_id: str) -> Iterator[Any]:
    """A read-only transaction on the exported snapshot, on a connection of its own."""
    if not _SNAPSHOT_ID.match(snapshot_id):  # pragma: no cover - the server's own id
        raise ValueError("unexpected snapshot id")
    raw = engine.raw_connection()
    dbapi: Any = raw.driver_connection
    try:
        dbapi.rollback()  # out of whatever a checkout ping began
        dbapi.autocommit = True  # BEGIN issued here, so SET TRANSACTION SNAPSHOT comes first
        cur = dbapi.cursor()
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # A literal (utility statements take no parameters); matched against a strict pattern.
        cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
        cur.execute("SET LOCAL extra_float_digits = 3")
        try:
            yield cur
        finally:
            cur.execute("ROLLBACK")
            cur.close()
            dbapi.autocommit = False
    except Exception:
        raw.invalidate()  # never hand a connection in an unknown state back to the pool
        raise
    finally:
        raw.close()


# -- planning ----------------------------------------------------------------------------
def default_workers() -> int:
    """Ranges verified at once by default: the cores here, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def plan(top: int, workers: int, min_range: int = MIN_RANGE) -> list[tuple[int, int]]:
    """Consecutive seq ranges covering 1..``top``, the last seq of the verifying snapshot.

    One range is open-ended: it is read on the verifying connection itself. Split, the last
    range stops at ``top``: a range read in a snapshot of its own (SQLite) must not vouch for
    events appended after the verifying snapshot, which would then look like rows beyond the
    recorded head. (Rows beyond ``top`` in the verifying snapshot, if any, are the exact walk's.)
    """
    n = max(1, min(workers, top // max(1, min_range)))
    if n == 1:
        return [(1, _TOP)]
    step = -(-top // n)
    return [(1 + i * step, min(top, (i + 1) * step)) for i in range(n)]


def _run_threads(
    first: Callable[[int, int], Run],
    other: Callable[[int, int], Run],
    ranges: Sequence[tuple[int, int]],
) -> list[Run]:
    """Range 0 in this thread (on the verifying connection), the rest in worker threads;
    a range whose worker failed vouches for nothing (the exact walk reads it)."""
    if len(ranges) == 1:
        return [first(*ranges[0])]

    def guarded(lo: int, hi: int) -> Run:
        try:
            return other(lo, hi)
        except Exception:  # a failed range only ends the fast run there
            return Run.none(lo)

    with ThreadPoolExecutor(max_workers=len(ranges) - 1, thread_name_prefix="tether-verify") as pool:
        futures = [pool.submit(guarded, lo, hi) for lo, hi in ranges[1:]]
        head = first(*ranges[0])
        return [head, *(f.result() for f in futures)]


def fast_prefix(
    conn: Connection,
    chain: str,
    at_seq: Mapping[int, Sequence[Checkpoint]] | None = None,
    *,
    workers: int = 1,
    min_range: int = MIN_RANGE,
) -> tuple[int, str]:
    """``(n, hash of event n)``: the longest run of events 1..n that verifies (links,
    hashes, checkpoints); ``(0, GENESIS_HASH)`` where no fast pass applies."""
    cps = at_seq or {}
    dialect = conn.dialect.name
    raw = conn.connection.driver_connection
    if dialect == "sqlite" and isinstance(raw, sqlite3.Connection):
        return _fast_sqlite(conn, raw, chain, cps, workers, min_range)
    if dialect == "postgresql":
        return _fast_pg(conn, chain, cps, workers, min_range)
    return 0, GENESIS_HASH


def _top(conn: Connection, chain: str, workers: int) -> int:
    if workers <= 1:
        return 0
    placeholder = "?" if conn.dialect.name == "sqlite" else "%(c)s"
    args: Any = (chain,) if conn.dialect.name == "sqlite" else {"c": chain}
    top = conn.exec_driver_sql(
        f"SELECT max(seq) FROM audit_events WHERE chain = {placeholder}",  # noqa: S608
        args,
    ).scalar()
    return int(top) if isinstance(top, int) else 0


def _fast_sqlite(
    conn: Connection,
    raw: sqlite3.Connection,
    chain: str,
    cps: Mapping[int, Sequence[Checkpoint]],
    workers: int,
    min_range: int,
) -> tuple[int, str]:
    conn.exec_driver_sql("SELECT 1")  # make sure the snapshot's read transaction has begun
    path = _sqlite_file(conn)
    if path is None or not sys.executable:
        workers = 1
    ranges = plan(_top(conn, chain, workers), workers, min_range)
    hashes = {s: [cp.hash for cp in group] for s, group in cps.items()}
    # The other ranges start first and run while this process scans range 0.
    procs: list[tuple[int, subprocess.Popen[bytes] | None]] = []
    for lo, hi in ranges[1:]:
        try:
            procs.append((lo, spawn_range(path, chain, lo, hi, hashes) if path else None))
        except OSError:  # no process could be started: that range vouches for nothing
            procs.append((lo, None))
    try:
        cur = raw.cursor()
        try:
            head = _as_run(ranges[0][0], rangescan.scan(cur, chain, *ranges[0], hashes))
        finally:
            cur.close()
        return join([head, *(Run.none(lo) if p is None else _collect(p, lo) for lo, p in procs)])
    finally:
        for _, p in procs:  # only if something above failed: never leave a scan running
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def _fast_pg(
    conn: Connection,
    chain: str,
    cps: Mapping[int, Sequence[Checkpoint]],
    workers: int,
    min_range: int,
) -> tuple[int, str]:
    conn.exec_driver_sql("SELECT 1")  # make sure the snapshot's transaction has begun
    cur: Any = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        ranges = plan(_top(conn, chain, workers), workers, min_range)
        snapshot_id = ""
        if len(ranges) > 1:
            # Exported outside the savepoint below (a subtransaction cannot export); a
            # standby may not export at all, so there the chain is one range.
            cur.execute("SELECT pg_is_in_recovery()")
            if cur.fetchone()[0]:
                ranges = plan(0, 1)
            else:
                cur.execute("SELECT pg_export_snapshot()")
                snapshot_id = str(cur.fetchone()[0])
        # Anything the server refuses in the fast pass (an old server without sha256, say)
        # must not abort the verifying transaction: the exact walk still has to run in it.
        cur.execute("SAVEPOINT tether_fastpass")
        try:
            cur.execute("SET LOCAL extra_float_digits = 3")  # exact float text
            badcp = _pg_bad_checkpoints(cur, chain, cps)
            engine = conn.engine

            def first(lo: int, hi: int) -> Run:
                return scan_pg(cur, chain, lo, hi, badcp)

            def other(lo: int, hi: int) -> Run:
                with _pg_cursor(engine, snapshot_id) as wcur:
                    return scan_pg(wcur, chain, lo, hi, badcp)

            result = join(_run_threads(first, other, ranges))
        except Exception:  # no fast pass; the exact walk verifies everything
            cur.execute("ROLLBACK TO SAVEPOINT tether_fastpass")
            return 0, GENESIS_HASH
        cur.execute("RELEASE SAVEPOINT tether_fastpass")
        return result
    finally:
        cur.close()

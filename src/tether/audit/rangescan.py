"""One seq range of ``verify``'s fast pass over SQLite (see ``tether.audit.fastpass``).

The standard library only, so that it also runs as a script: a long chain's other ranges
are each verified by ``python -I -S rangescan.py`` in a process of its own (the hashing is
Python and holds the GIL, so threads would take turns; and a script of the standard library
starts in milliseconds, where importing the package would cost more than the range).
The request comes on stdin as JSON (database file, chain, ``lo``, ``hi``, checkpoints as
seq → hashes), the answer goes to stdout as JSON: ``[first_prev, last, last_hash, whole]``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

# ``row_hash``'s layout, assembled by SQLite around ``ts`` (one ``printf``, which builds the
# text once instead of copying it at every ``||``). Keep in step with row_hash. A NULL
# ``payload``/``seq``/``v`` (the schema forbids them) would print as text that is not valid
# JSON, so it can never hash to a stored hash: not vouched for.
_BEFORE_TS_FMT = (
    '{"agent":%s,"chain":%s,"decision_id":%s,"delegator":%s,"lease_id":%s,'
    '"parent_task_id":%s,"payload":%s,"prev_hash":%s,"root_task_id":%s,"seq":%d,'
    '"task_id":%s,"trace_id":%s,"ts":'
)
SQL_BODY_BEFORE_TS = (
    f"CAST(printf('{_BEFORE_TS_FMT}', json_quote(agent), json_quote(chain), "
    "json_quote(decision_id), json_quote(delegator), json_quote(lease_id), "
    "json_quote(parent_task_id), payload, json_quote(prev_hash), json_quote(root_task_id), seq, "
    "json_quote(task_id), json_quote(trace_id)) AS BLOB)"
)
SQL_BODY_AFTER_TS = 'CAST(printf(\',"type":%s,"v":%d}\', json_quote(type), v) AS BLOB)'
# Built from the constants above only; every value is a bound parameter.
SQLITE_RANGE = (
    f"SELECT seq, prev_hash, hash, {SQL_BODY_BEFORE_TS}, ts, {SQL_BODY_AFTER_TS} "  # noqa: S608
    "FROM audit_events WHERE chain = ? AND seq >= ? AND seq <= ? ORDER BY seq"
)
#: Rows per ``fetchmany``: large enough that the call overhead vanishes, small enough
#: that memory stays flat whatever the size of the chain.
CHUNK = 4096

#: ``(first_prev, last, last_hash, whole)``: the prev_hash of the row at ``lo`` (None when
#: nothing was vouched for), the last seq vouched for (``lo - 1``: none), its hash, and
#: whether every seq up to ``hi`` was.
Result = tuple[str | None, int, str, bool]


def scan(cur: sqlite3.Cursor, chain: str, lo: int, hi: int, cps: Mapping[int, Collection[str]]) -> Result:
    """Vouch for seqs ``lo``..``hi`` of ``chain``: each row in its place, linked to the row
    before it (the first row's link is for the caller to join) and hashing to its stored
    hash, and matching every checkpoint at its seq (``cps``: seq → checkpoint hashes)."""
    sha256, fmt = hashlib.sha256, float.__repr__
    first_prev: str | None = None
    prev, expected = "", lo
    try:
        cur.execute(SQLITE_RANGE, (chain, lo, hi))
        rows = cur.fetchmany(CHUNK)
        if rows:
            first_prev = prev = rows[0][1]
        while rows:
            for seq, prev_hash, h, pre, ts, post in rows:
                if (
                    seq != expected
                    or prev_hash != prev
                    or type(ts) is not float
                    or sha256(pre + fmt(ts).encode() + post).hexdigest() != h
                    or (seq in cps and any(c != h for c in cps[seq]))
                ):
                    return _result(first_prev, lo, expected, prev, False)
                prev = h
                expected += 1
            rows = cur.fetchmany(CHUNK)  # the cursor steps the query: memory stays flat
    except (sqlite3.Error, TypeError):  # no JSON1, a NULL piece, a non-text column: look closer
        return _result(first_prev, lo, expected, prev, False)
    return _result(first_prev, lo, expected, prev, expected > hi)


def read_only(cur: sqlite3.Cursor, chain: str, lo: int, hi: int) -> int:
    """``scan``'s reading without its checking (the benchmark's floor): how many rows."""
    n = 0
    cur.execute(SQLITE_RANGE, (chain, lo, hi))
    rows = cur.fetchmany(CHUNK)
    while rows:
        for _seq, _prev_hash, _h, _pre, _ts, _post in rows:
            n += 1
        rows = cur.fetchmany(CHUNK)
    return n


def _result(first_prev: str | None, lo: int, expected: int, prev: str, whole: bool) -> Result:
    if expected == lo:
        return None, lo - 1, "", False
    return first_prev, expected - 1, prev, whole


def main() -> None:
    req = json.load(sys.stdin)
    con = sqlite3.connect(f"{Path(req['db']).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        con.isolation_level = None
        cur = con.cursor()
        cur.execute("BEGIN")  # one read transaction: one snapshot for the whole range
        chain, lo, hi = req["chain"], int(req["lo"]), int(req["hi"])
        if req.get("floor"):
            json.dump(read_only(cur, chain, lo, hi), sys.stdout)
        else:
            cps = {int(s): hs for s, hs in req["cps"].items()}
            json.dump(scan(cur, chain, lo, hi, cps), sys.stdout)
    finally:
        con.close()


if __name__ == "__main__":
    main()

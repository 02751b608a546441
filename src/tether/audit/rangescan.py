"""One seq range of ``verify``'s fast pass over SQLite (see ``tether.audit.fastpass``).

The standard library only, so that it also runs as a script: a long chain's other ranges
are each verified by ``python -I -S rangescan.py`` in a process of its own (the hashing is
Python and holds the GIL, so threads would take turns; and a script of the standard library
starts in milliseconds, where importing the package would cost more than the range).
The request comes on stdin as JSON (database file, chain, ``lo``, ``hi``, checkpoints as
seq → hashes), the answer goes to stdout as JSON: ``[first_prev, last, last_hash, whole]``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sqlite3
import sys
from collections.abc import Collection, Mapping
from json.encoder import encode_basestring
from pathlib import Path

# ``row_hash``'s layout, assembled by SQLite around ``ts``. Keep in step with row_hash. Each
# ``json_object`` writes its keys and values into one buffer with ``json_quote``'s escaping
# (a test pins it to row_hash), where a ``json_quote`` per column built a string for each;
# ``printf`` then joins the two objects, stripped of their braces, around the raw payload
# (one text built once instead of a copy at every ``||``). A value in JSON ends in ``"``,
# ``l`` or a digit, so each trim takes exactly one brace. A NULL ``payload`` (the schema
# forbids it) prints as nothing, which is not valid JSON and can never hash to a stored
# hash: not vouched for; so is a ``seq`` or ``v`` that is not an integer (``json_object``
# spells it as what it is, where ``%d`` would have rounded it).
_HEAD = (
    "json_object('agent', agent, 'chain', chain, 'decision_id', decision_id, 'delegator', delegator, "
    "'lease_id', lease_id, 'parent_task_id', parent_task_id)"
)
# ``prev_hash`` is printed as it is, not quoted by ``json_object`` (a tenth of the row's
# cost): a row is vouched for only if its prev_hash equals the hash of the row before it,
# and a range only if its first row's prev_hash equals the previous range's last hash (or
# the genesis hash), all 64 lowercase hex digits, which JSON spells as they are.
_MIDDLE = "json_object('root_task_id', root_task_id, 'seq', seq, 'task_id', task_id, 'trace_id', trace_id)"
SQL_BODY_BEFORE_TS = (
    f'CAST(printf(\'%s,"payload":%s,"prev_hash":"%s",%s,"ts":\', rtrim({_HEAD}, \'}}\'), payload, '
    f"prev_hash, trim({_MIDDLE}, '{{}}')) AS BLOB)"
)
# Built from the constants above only; every value is a bound parameter. What follows ``ts``
# in the body (``type`` and ``v``) is spelled by ``tail`` in Python: a few distinct texts,
# each made once, where SQLite would build one per row.
SQLITE_RANGE = (
    f"SELECT seq, prev_hash, hash, {SQL_BODY_BEFORE_TS}, ts, type, v "  # noqa: S608
    "FROM audit_events WHERE chain = ? AND seq >= ? AND seq <= ? ORDER BY seq"
)
#: Rows per ``fetchmany``: large enough that the call overhead vanishes, small enough that
#: memory stays flat and a batch of rows stays in the CPU's cache while it is checked.
CHUNK = 256
#: Most distinct ``(type, v)`` tails remembered (there are a few dozen event types).
_TAILS = 256

#: ``(first_prev, last, last_hash, whole)``: the prev_hash of the row at ``lo`` (None when
#: nothing was vouched for), the last seq vouched for (``lo - 1``: none), its hash, and
#: whether every seq up to ``hi`` was.
Result = tuple[str | None, int, str, bool]


def scan(cur: sqlite3.Cursor, chain: str, lo: int, hi: int, cps: Mapping[int, Collection[str]]) -> Result:
    """Vouch for seqs ``lo``..``hi`` of ``chain``: each row in its place, linked to the row
    before it (the first row's link is for the caller to join) and hashing to its stored
    hash, and matching every checkpoint at its seq (``cps``: seq → checkpoint hashes)."""
    sha256, fmt = hashlib.sha256, float.__repr__
    tails: dict[tuple[str, int], bytes] = {}
    first_prev: str | None = None
    prev, expected = "", lo
    try:
        cur.execute(SQLITE_RANGE, (chain, lo, hi))
        rows = cur.fetchmany(CHUNK)
        if rows:
            first_prev = prev = rows[0][1]
        while rows:
            for seq, prev_hash, h, pre, ts, typ, v in rows:
                post = tails.get((typ, v)) or tail(typ, v, tails)
                if (
                    seq != expected
                    or prev_hash != prev
                    or type(ts) is not float
                    or type(v) is not int
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
        for _seq, _prev_hash, _h, _pre, _ts, _typ, _v in rows:
            n += 1
        rows = cur.fetchmany(CHUNK)
    return n


def tail(type_: object, v: object, memo: dict[tuple[str, int], bytes] | None = None) -> bytes:
    """The canonical body after ``ts`` as ``row_hash`` spells it (``"type"`` and ``"v"``), as
    UTF-8; ``b""`` for a type or v that row_hash would not spell so: a body without its closing
    brace is not valid JSON and never hashes to a stored hash. ``memo`` remembers it."""
    if type(type_) is not str or type(v) is not int:
        return b""
    text = f',"type":{encode_basestring(type_)},"v":{v}}}'.encode()
    if memo is not None and len(memo) < _TAILS:
        memo[type_, v] = text
    return text


def _result(first_prev: str | None, lo: int, expected: int, prev: str, whole: bool) -> Result:
    if expected == lo:
        return None, lo - 1, "", False
    return first_prev, expected - 1, prev, whole


def main() -> None:
    # This process only scans: its rows are tuples freed as soon as they are checked, and
    # it holds no cycles, so the collector's passes over each batch would be pure cost.
    gc.disable()
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

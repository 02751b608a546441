"""Walk every chain and report the first broken link, naming its seq.

Linear and streaming: rows are read in ``seq`` order in batches (keyset pagination) and
only the previous hash, one look-ahead row and the chain's checkpoints are kept, so
memory stays constant whatever the size of the log. Hashes are recomputed from the
stored payload text (``event.row_hash``) without parsing it.

A fast pass runs first (``tether.audit.fastpass``): the database itself assembles each
row's canonical body (SQLite: Python then hashes; PostgreSQL: the server hashes too), in
seq ranges verified at the same time and then joined at their boundaries. A row that
passes it is intact by construction (its bytes hash to the stored hash); the first row
that does not — or anything unexpected — hands over to the exact walk below from that
seq on, which re-checks and classifies with ``row_hash``.

Kinds of break, each reported at the seq where it shows:

    edited               the row's content no longer matches its hash (or the row was
                         re-hashed after editing, so the next row no longer links to it)
    missing              a seq is absent, or a row was deleted and later ones renumbered
    reordered            a row's content belongs at another seq (rows swapped)
    inserted             a row that was never written: an extra row before this seq, or
                         rows beyond the head the writer recorded
    truncated            the chain ends before its recorded head or a stored checkpoint
    rolled_back          the chain ends before a checkpoint kept outside the database
    head_mismatch        the last row differs from the recorded head
    checkpoint_mismatch  the row at a checkpoint's seq has another hash (chain rewritten)
    bad_signature        a checkpoint's ES256 signature does not verify (or was moved)
    unknown_key          no public key for a checkpoint's kid
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from tether.audit.checkpoint import Checkpoint, store_jwks, stored_checkpoints, verify_checkpoint
from tether.audit.event import Event, row_hash
from tether.audit.fastpass import MIN_RANGE, default_workers, fast_prefix
from tether.store import tables as t
from tether.store.db import Database

_WINDOW = 8  # how far from its place a moved row is looked for (only after a break)
_E = t.audit_events.c
_COLUMNS = (
    _E.seq,
    _E.chain,
    _E.ts,
    _E.type,
    _E.prev_hash,
    _E.payload,
    _E.task_id,
    _E.root_task_id,
    _E.parent_task_id,
    _E.agent,
    _E.delegator,
    _E.decision_id,
    _E.lease_id,
    _E.trace_id,
    _E.v,
    _E.hash,
)
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Break:
    chain: str
    seq: int
    kind: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "seq": self.seq, "kind": self.kind, "message": self.message}


@dataclass
class VerifyReport:
    chains: dict[str, int] = field(default_factory=dict)  # chain → events verified
    breaks: list[Break] = field(default_factory=list)
    checkpoints: int = 0  # authentic checkpoints matched (stored and external)

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def events(self) -> int:
        return sum(self.chains.values())

    @property
    def first(self) -> Break | None:
        return self.breaks[0] if self.breaks else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "chains": self.chains,
            "checkpoints": self.checkpoints,
            "breaks": [b.to_dict() for b in self.breaks],
        }


def row_to_event(m: Any) -> Event:
    return Event(
        chain=m["chain"],
        seq=m["seq"],
        ts=m["ts"],
        type=m["type"],
        prev_hash=m["prev_hash"],
        payload=json.loads(m["payload"]),
        task_id=m["task_id"],
        root_task_id=m["root_task_id"],
        parent_task_id=m["parent_task_id"],
        agent=m["agent"],
        delegator=m["delegator"],
        decision_id=m["decision_id"],
        lease_id=m["lease_id"],
        trace_id=m["trace_id"],
        v=m["v"],
        hash=m["hash"],
    )


def iter_chain(conn: Connection, chain: str, batch: int = 5000) -> Iterator[Event]:
    for r in _rows(conn, chain, batch):
        yield row_to_event(dict(zip((c.name for c in _COLUMNS), r, strict=True)))


def _rows(conn: Connection, chain: str, batch: int = 20000, after: int = 0) -> Iterator[Row]:
    last = after
    while True:
        rows = conn.execute(
            select(*_COLUMNS).where(_E.chain == chain, _E.seq > last).order_by(_E.seq).limit(batch)
        ).all()
        if not rows:
            return
        yield from (tuple(r) for r in rows)
        last = rows[-1][0]


def fast_intact(before: bytes | None, ts: Any, after: bytes | None, stored: str) -> bool:
    """True when the SQL-assembled body hashes to ``stored`` (then the row is intact);
    False means "not vouched for": ask ``row_hash``."""
    if before is None or after is None or type(ts) is not float:
        return False
    return hashlib.sha256(before + float.__repr__(ts).encode() + after).hexdigest() == stored


def _hash_as(r: Row, seq: int) -> str:
    return row_hash(
        seq=seq,
        chain=r[1],
        ts=r[2],
        type=r[3],
        prev_hash=r[4],
        payload_text=r[5],
        task_id=r[6],
        root_task_id=r[7],
        parent_task_id=r[8],
        agent=r[9],
        delegator=r[10],
        decision_id=r[11],
        lease_id=r[12],
        trace_id=r[13],
        v=r[14],
    )


def _belongs(r: Row, at: int) -> int | None:
    """The seq this row's content was hashed for, searched near ``at``; None if edited."""
    for d in range(_WINDOW + 1):
        for s in (at,) if d == 0 else (at + d, at - d):
            if s >= 1 and _hash_as(r, s) == r[15]:
                return s
    return None


def _classify(chain: str, k: int, r: Row, nxt: Row | None) -> Break:
    """Name the tampering behind a row at position ``k`` that does not fit the chain."""
    b = _belongs(r, k)
    if b == k:  # intact row that does not link: the one before was rewritten and re-hashed
        if k == 1:
            return Break(chain, 1, "edited", "event 1 does not start the chain")
        return Break(
            chain,
            k - 1,
            "edited",
            f"event {k - 1} was rewritten and re-hashed: event {k} no longer links to it",
        )
    if b is None:
        return Break(chain, k, "edited", f"event {k} was modified (its content does not match its hash)")
    if b > k:
        if nxt is not None and _belongs(nxt, k + 1) == b + 1:
            return Break(chain, k, "missing", f"event {k} was deleted and later events renumbered")
        return Break(chain, k, "reordered", f"the event at seq {k} was written as seq {b} (rows moved)")
    return Break(
        chain,
        k - 1,
        "inserted",
        f"an event was inserted at seq {k - 1}: the event at seq {k} was written as seq {b}",
    )


def verify_chain(
    conn: Connection,
    chain: str,
    head: tuple[int, str] | None,
    checkpoints: Sequence[tuple[Checkpoint, bool]] = (),
    *,
    workers: int = 1,
    min_range: int = MIN_RANGE,
) -> tuple[int, list[Break]]:
    """Verify one chain against its head and (authentic) checkpoints; ``(events, breaks)``.

    ``checkpoints`` pairs each checkpoint with ``external`` (kept outside the database).
    ``workers``: how many seq ranges (of at least ``min_range`` events) the fast pass
    verifies at the same time.
    """
    at_seq: dict[int, list[Checkpoint]] = {}
    for cp, _ext in checkpoints:
        at_seq.setdefault(cp.seq, []).append(cp)
    count, prev = fast_prefix(conn, chain, at_seq, workers=workers, min_range=min_range)
    expected = count + 1
    rows = _rows(conn, chain, after=count)
    for r in rows:
        seq = r[0]
        if seq != expected:
            return count, [Break(chain, expected, "missing", f"event {expected} is missing (next is {seq})")]
        if r[4] != prev or _hash_as(r, seq) != r[15]:
            return count, [_classify(chain, seq, r, next(rows, None))]
        for cp in at_seq.get(seq, ()):
            if cp.hash != r[15]:
                return count, [
                    Break(
                        chain,
                        seq,
                        "checkpoint_mismatch",
                        f"event {seq} differs from the signed checkpoint at seq {seq}",
                    )
                ]
        prev = r[15]
        expected += 1
        count += 1
    for cp, external in sorted(checkpoints, key=lambda c: c[0].seq, reverse=True):
        if cp.seq > count:
            kind = "rolled_back" if external else "truncated"
            return count, [
                Break(
                    chain,
                    count + 1,
                    kind,
                    f"chain ends at seq {count} but a signed checkpoint "
                    f"{'kept outside the database ' if external else ''}has seq {cp.seq}",
                )
            ]
    if head is not None:
        head_seq, head_hash = head
        if head_seq > count:
            return count, [
                Break(
                    chain, count + 1, "truncated", f"chain ends at seq {count} but its head says {head_seq}"
                )
            ]
        if head_seq < count:
            return count, [
                Break(
                    chain,
                    head_seq + 1,
                    "inserted",
                    f"events after the recorded head (seq {head_seq}) were never written by the broker",
                )
            ]
        if head_hash != prev:
            return count, [Break(chain, count, "head_mismatch", "last event differs from the recorded head")]
    return count, []


def verify_chains(
    conn: Connection,
    *,
    external: Iterable[Checkpoint] = (),
    jwks: Mapping[str, Mapping[str, Any]] | None = None,
    workers: int = 1,
    min_range: int = MIN_RANGE,
) -> VerifyReport:
    """Verify every chain in the store, its stored checkpoints and ``external`` ones.

    ``jwks`` (kid → public JWK) overrides the keys in the store: pass the broker's
    published JWKS when the store itself is under suspicion. ``workers``: see
    ``verify_chain`` (more than one opens connections of its own beside ``conn``).
    """
    report = VerifyReport()
    keys = dict(jwks) if jwks is not None else store_jwks(conn)
    heads = {
        r[0]: (int(r[1]), str(r[2]))
        for r in conn.execute(
            select(t.audit_chains.c.chain, t.audit_chains.c.head_seq, t.audit_chains.c.head_hash)
        )
    }
    cps: dict[str, list[tuple[Checkpoint, bool]]] = {}
    for cp, ext in [*((c, False) for c in stored_checkpoints(conn)), *((c, True) for c in external)]:
        cps.setdefault(cp.chain, []).append((cp, ext))
    chains = set(heads) | set(cps) | set(conn.execute(select(_E.chain).distinct()).scalars())
    for chain in sorted(chains):
        good: list[tuple[Checkpoint, bool]] = []
        sig_breaks: list[Break] = []
        for cp, ext in sorted(cps.get(chain, []), key=lambda c: c[0].seq):
            problem = verify_checkpoint(cp, keys)
            if problem is None:
                good.append((cp, ext))
            elif not sig_breaks:
                where = "kept outside the database " if ext else ""
                sig_breaks.append(
                    Break(
                        chain,
                        cp.seq,
                        problem,
                        f"checkpoint {where}at seq {cp.seq}: "
                        + (
                            "no public key for its kid"
                            if problem == "unknown_key"
                            else "signature does not verify"
                        ),
                    )
                )
        count, breaks = verify_chain(
            conn, chain, heads.get(chain), good, workers=workers, min_range=min_range
        )
        report.chains[chain] = count
        report.checkpoints += len(good)
        report.breaks.extend(sorted([*sig_breaks, *breaks], key=lambda b: b.seq))
    return report


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A read connection that sees one consistent snapshot across all its queries.

    SQLite's deferred read transaction already does; PostgreSQL needs REPEATABLE READ,
    or events committed during the walk would look like rows beyond the head.
    """
    with db.guard(), db.engine.connect() as conn:
        opts: dict[str, Any] = {"tether_readonly": True}
        if db.dialect == "postgresql":
            opts["isolation_level"] = "REPEATABLE READ"
        yield conn.execution_options(**opts)


def verify_database(db: Database, *, workers: int | None = None, **kwargs: Any) -> VerifyReport:
    """``verify_chains`` on one snapshot of ``db``; long chains are verified in
    ``workers`` ranges at once (default: the cores here, at most 4)."""
    with snapshot(db) as conn:
        return verify_chains(conn, workers=default_workers() if workers is None else workers, **kwargs)

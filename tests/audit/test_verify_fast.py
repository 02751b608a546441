"""The fast pass of `verify` (SQLite and PostgreSQL): it must agree with `row_hash` byte for
byte, hand over to the exact walk at the first row it cannot vouch for, and — split into seq
ranges verified at once — end exactly where a single pass would, wherever the tampering is."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.audit.event import row_hash
from tether.audit.fastpass import fast_prefix
from tether.audit.verify import verify_database
from tether.store.db import Database

AWKWARD = [
    'quote " and backslash \\ and slash /',
    "control \x00\x01\x08\t\n\x0b\x0c\r\x1f and DEL \x7f",
    "line sep \u2028 para sep \u2029",
    "accents é, CJK 漢字, emoji 😀, BOM \ufeff",
    "",
]


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    d = Database(store_url)
    d.migrate()
    yield d
    d.dispose()


def write(db: Database, n: int) -> AuditChain:
    chain = AuditChain(db, 'node-ü"1')
    for i in range(n):
        s = AWKWARD[i % len(AWKWARD)]
        if db.dialect == "postgresql":  # its text cannot hold NUL; every other awkward byte stays
            s = s.replace("\x00", "")
        with chain.unit() as u:
            u.emit(
                ev.DECISION,
                {"text": s, "n": i, "f": i / 3, "nested": {"k": [s, None, True]}},
                task_id=f"tsk_{s}",
                root_task_id=f"tsk_{s}",
                parent_task_id=None if i % 2 else s,
                agent=f"spiffe://support.example/{s}",
                delegator=None if i % 3 else s,
                decision_id=f"dec_{i}",
                trace_id=None,
            )
    return chain


def test_fast_pass_vouches_for_every_row_of_an_intact_log_with_awkward_text(db):
    """Quotes, control characters, separators, non-ASCII and NULLs hash the same in SQL and Python."""
    chain = write(db, 40)
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id) == chain.head
    report = verify_database(db)
    assert report.ok and report.events == 40


def test_edited_payload_stops_the_fast_pass_and_is_reported_at_its_seq(db):
    """The fast pass stops at the edited row; the exact walk names it `edited` there."""
    chain = write(db, 20)
    with db.begin() as conn:
        conn.execute(
            text("UPDATE audit_events SET payload = :p WHERE chain = :c AND seq = 7"),
            {"p": '{"text":"forged"}', "c": chain.chain_id},
        )
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id)[0] == 6
    report = verify_database(db)
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == ("edited", 7)


# Three ranges over a 40-event chain: seqs 1-14, 15-28 and 29 on.
RANGED = {"workers": 3, "min_range": 5}


def tamper(db: Database, chain: AuditChain, statement: str, **params: object) -> None:
    with db.begin() as conn:
        conn.execute(text(statement), {"c": chain.chain_id, **params})


def first_break(db: Database) -> tuple[str, int]:
    """The first break, found alike by one pass and by three ranges."""
    single, ranged = verify_database(db, workers=1), verify_database(db, **RANGED)
    assert single.to_dict() == ranged.to_dict()
    assert ranged.first is not None
    return ranged.first.kind, ranged.first.seq


@pytest.mark.parametrize(
    "column, value",
    [("type", "'task.closed'"), ("v", "2")],
    ids=["type", "version"],
)
def test_rewritten_type_or_version_attack_stops_the_fast_pass_at_its_seq(db, column, value):
    """What follows ``ts`` in the body (type and v) is spelled in Python from a few remembered
    texts: a row whose type or version was rewritten still ends the fast run at its seq."""
    chain = write(db, 12)
    tamper(db, chain, f"UPDATE audit_events SET {column} = {value} WHERE chain = :c AND seq = 9")
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id)[0] == 8
    report = verify_database(db)
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == ("edited", 9)


def test_version_stored_as_a_fraction_attack_is_not_vouched_by_the_fast_pass(sqlite_url):
    """SQLite keeps 3.5 in an INTEGER column: the fast pass spells v as stored (never rounded
    to 3), so it does not vouch for the row; the exact walk has the last word on it."""
    d = Database(sqlite_url)
    d.migrate()
    try:
        chain = write(d, 12)
        tamper(d, chain, "UPDATE audit_events SET v = 3.5 WHERE chain = :c AND seq = 5")
        with d.read() as conn:
            assert fast_prefix(conn, chain.chain_id)[0] == 4
    finally:
        d.dispose()


def test_edit_just_past_a_fetch_batch_attack_is_detected(db):
    """The fast pass reads rows in batches of ``CHUNK``: an edit on either side of a batch's
    end still ends the run at its seq."""
    from tether.audit.rangescan import CHUNK

    chain = write(db, CHUNK + 2)
    for seq in (CHUNK + 1, CHUNK):
        tamper(db, chain, "UPDATE audit_events SET payload = '{}' WHERE chain = :c AND seq = :s", s=seq)
        with db.read() as conn:
            assert fast_prefix(conn, chain.chain_id)[0] == seq - 1
    report = verify_database(db)
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == ("edited", CHUNK)


def test_ranged_fast_pass_vouches_for_every_row_of_an_intact_log(db):
    """Three ranges verified at once on their own connections vouch for the whole chain."""
    chain = write(db, 40)
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id, **RANGED) == chain.head
    report = verify_database(db, **RANGED)
    assert report.ok and report.events == 40


def test_edit_in_the_middle_of_a_range_attack_is_detected(db):
    """An edited payload inside the second range ends the fast run there and is `edited` at its seq."""
    chain = write(db, 40)
    tamper(db, chain, "UPDATE audit_events SET payload = '{}' WHERE chain = :c AND seq = 20")
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id, **RANGED)[0] == 19
    assert first_break(db) == ("edited", 20)


@pytest.mark.parametrize("seq", [14, 15], ids=["last-of-range", "first-of-range"])
def test_edit_at_a_range_boundary_attack_is_detected(db, seq):
    """An edited event on either side of a range boundary is `edited` at its seq."""
    chain = write(db, 40)
    tamper(db, chain, "UPDATE audit_events SET payload = '{}' WHERE chain = :c AND seq = :s", s=seq)
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id, **RANGED)[0] == seq - 1
    assert first_break(db) == ("edited", seq)


def test_edit_and_rehash_at_a_range_boundary_attack_is_detected(db):
    """The last event of a range edited and re-hashed: its range is intact on its own, but the next
    range's first link no longer joins it, so the edited seq is named."""
    chain = write(db, 40)
    with db.read() as conn:
        r = dict(
            conn.execute(
                text("SELECT * FROM audit_events WHERE chain = :c AND seq = 14"), {"c": chain.chain_id}
            )
            .one()
            ._mapping
        )
    payload = json.dumps({"forged": True}, separators=(",", ":"))
    fields = {
        k: r[k]
        for k in (
            "chain",
            "seq",
            "ts",
            "type",
            "prev_hash",
            "task_id",
            "root_task_id",
            "parent_task_id",
            "agent",
            "delegator",
            "decision_id",
            "lease_id",
            "trace_id",
            "v",
        )
    }
    forged = row_hash(**fields, payload_text=payload)
    tamper(
        db,
        chain,
        "UPDATE audit_events SET payload = :p, hash = :h WHERE chain = :c AND seq = 14",
        p=payload,
        h=forged,
    )
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id, **RANGED)[0] == 14  # as a single pass: 15 does not link
    assert first_break(db) == ("edited", 14)


def test_deleted_first_event_of_a_range_attack_is_reported_missing(db):
    """Deleting the event a range starts at leaves that range nothing to join: `missing` there."""
    chain = write(db, 40)
    tamper(db, chain, "DELETE FROM audit_events WHERE chain = :c AND seq = 29")
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id, **RANGED)[0] == 28
    assert first_break(db) == ("missing", 29)


def test_swapped_events_across_a_range_boundary_attack_is_reported_reordered(db):
    """Two events swapped across a boundary: `reordered` at the first of them."""
    chain = write(db, 40)
    for a, b in ((14, -1), (15, 14), (-1, 15)):
        tamper(db, chain, "UPDATE audit_events SET seq = :b WHERE chain = :c AND seq = :a", a=a, b=b)
    assert first_break(db) == ("reordered", 14)


def test_ranges_whose_processes_cannot_start_are_verified_by_the_exact_walk(sqlite_url, monkeypatch):
    """SQLite's range processes cannot start (no interpreter): the first range still vouches,
    the rest is read by the exact walk, and a tampered event there is still named."""
    db = Database(sqlite_url)
    db.migrate()
    chain = write(db, 40)
    tamper(db, chain, "UPDATE audit_events SET payload = '{}' WHERE chain = :c AND seq = 33")
    monkeypatch.setattr("sys.executable", "/nonexistent/python")
    with db.read() as conn:
        assert fast_prefix(conn, chain.chain_id, **RANGED)[0] == 14
    report = verify_database(db, **RANGED)
    db.dispose()
    assert report.first is not None and (report.first.kind, report.first.seq) == ("edited", 33)


def test_events_appended_during_a_ranged_verify_are_not_counted_beyond_the_snapshot(db):
    """A broker appending while verify runs: ranges read elsewhere than the verifying snapshot
    (SQLite's range processes) stop at its last seq, so no false `inserted` beyond the head."""
    from tether.audit.verify import snapshot, verify_chains

    chain = write(db, 40)
    head = chain.head
    with snapshot(db) as conn:
        conn.execute(text("SELECT max(seq) FROM audit_events")).scalar()  # the snapshot begins
        more = AuditChain(db, chain.chain_id)
        for _ in range(9):
            with more.unit() as u:
                u.emit(ev.DECISION, {"n": 1})
        assert more.head[0] == 49
        assert fast_prefix(conn, chain.chain_id, **RANGED) == head
        report = verify_chains(conn, **RANGED)
    assert report.ok and report.events == 40


@pytest.mark.parametrize("seq", [1, 15], ids=["first-of-chain", "first-of-range"])
def test_json_injected_into_a_range_heads_prev_hash_attack_is_not_vouched(sqlite_url, seq):
    """SQLite prints prev_hash into the body unquoted: a range's first row whose prev_hash
    carries JSON, re-hashed over the very body the fast pass assembles, must still not be
    vouched for (the join wants the previous hash there, 64 hex digits)."""
    from tether.audit.rangescan import SQL_BODY_BEFORE_TS, tail

    d = Database(sqlite_url)
    d.migrate()
    try:
        chain = write(d, 40)
        forged = '0","x":"1'
        tamper(
            d, chain, "UPDATE audit_events SET prev_hash = :p WHERE chain = :c AND seq = :s", p=forged, s=seq
        )
        with d.read() as conn:
            pre, ts, typ, v = conn.execute(
                text(
                    f"SELECT {SQL_BODY_BEFORE_TS}, ts, type, v FROM audit_events "
                    "WHERE chain = :c AND seq = :s"
                ),
                {"c": chain.chain_id, "s": seq},
            ).one()
        h = hashlib.sha256(pre + repr(ts).encode() + tail(typ, v)).hexdigest()
        tamper(d, chain, "UPDATE audit_events SET hash = :h WHERE chain = :c AND seq = :s", h=h, s=seq)
        for kw in ({}, RANGED):
            with d.read() as conn:
                assert fast_prefix(conn, chain.chain_id, **kw)[0] == seq - 1  # type: ignore[arg-type]
        report = verify_database(d, **RANGED)
        assert report.first is not None and report.first.seq == seq
    finally:
        d.dispose()

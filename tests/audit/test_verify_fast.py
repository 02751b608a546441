"""The fast SQLite pass of `verify`: it must agree with `row_hash` byte for byte, and hand
over to the exact walk at the first row it cannot vouch for."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.audit.verify import fast_prefix, verify_database
from tether.store.db import Database

AWKWARD = [
    'quote " and backslash \\ and slash /',
    "control \x00\x01\x08\t\n\x0b\x0c\r\x1f and DEL \x7f",
    "line sep \u2028 para sep \u2029",
    "accents é, CJK 漢字, emoji 😀, BOM \ufeff",
    "",
]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(f"sqlite:///{tmp_path / 'audit.db'}")
    d.migrate()
    return d


def write(db: Database, n: int) -> AuditChain:
    chain = AuditChain(db, 'node-ü"1')
    for i in range(n):
        s = AWKWARD[i % len(AWKWARD)]
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

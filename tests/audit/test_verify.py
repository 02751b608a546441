"""`verify` against a real database tampered with raw SQL (SQLite file and PostgreSQL).

Each attack test edits the store the way an intruder with database access would and
checks that verification fails closed, names the kind of break and the exact seq.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tether.audit.checkpoint import read_checkpoint_file
from tether.audit.event import GENESIS_HASH, Event, canonical_for, canonical_json, row_hash
from tether.audit.verify import verify_database
from tether.runtime import Runtime
from tether.store.db import Database

from .helpers import build_tree, scalar, sql


def rows(rt: Runtime) -> list[dict[str, Any]]:
    with rt.db.engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                text("SELECT * FROM audit_events WHERE chain = :c ORDER BY seq"), {"c": rt.audit.chain_id}
            )
        ]


def rehash(r: dict[str, Any], seq: int | None = None) -> str:
    return row_hash(
        seq=r["seq"] if seq is None else seq,
        chain=r["chain"],
        ts=r["ts"],
        type=r["type"],
        prev_hash=r["prev_hash"],
        payload_text=r["payload"],
        task_id=r["task_id"],
        root_task_id=r["root_task_id"],
        parent_task_id=r["parent_task_id"],
        agent=r["agent"],
        delegator=r["delegator"],
        decision_id=r["decision_id"],
        lease_id=r["lease_id"],
        trace_id=r["trace_id"],
        v=r["v"],
    )


def first_break(rt: Runtime, **kw: Any) -> tuple[str, int]:
    report = verify_database(rt.db, **kw)
    assert not report.ok
    b = report.breaks[0]
    return b.kind, b.seq


def set_head(rt: Runtime, seq: int) -> None:
    h = scalar(rt, "SELECT hash FROM audit_events WHERE chain = :c AND seq = :s", c=rt.audit.chain_id, s=seq)
    sql(
        rt,
        "UPDATE audit_chains SET head_seq = :s, head_hash = :h WHERE chain = :c",
        s=seq,
        h=h,
        c=rt.audit.chain_id,
    )


@pytest.fixture
def logged(runtime: Runtime) -> Runtime:
    build_tree(runtime)
    return runtime


def test_intact_log_verifies_with_its_checkpoint(logged):
    """An untouched log verifies, and its signed checkpoint is counted."""
    assert logged.checkpoints.tick(force=True) is not None
    report = verify_database(logged.db)
    assert report.ok and report.events == len(rows(logged)) and report.checkpoints == 1


def test_payload_edit_attack_is_named_at_its_seq(logged):
    """Editing one event's payload breaks that event's own hash: `edited` at its seq."""
    sql(logged, "UPDATE audit_events SET payload = :p WHERE seq = 5", p='{"outcome":"allow"}')
    assert first_break(logged) == ("edited", 5)


def test_edit_and_rehash_attack_is_named_at_the_edited_seq(logged):
    """Re-hashing an edited event moves the break to the next link, but verify names the edited seq."""
    r = rows(logged)[4]
    r["payload"] = canonical_json({**json.loads(r["payload"]), "outcome": "allow"})
    sql(logged, "UPDATE audit_events SET payload = :p, hash = :h WHERE seq = 5", p=r["payload"], h=rehash(r))
    assert first_break(logged) == ("edited", 5)


def test_deleted_row_attack_is_reported_missing(logged):
    """Deleting an event leaves a gap: `missing` at the deleted seq."""
    sql(logged, "DELETE FROM audit_events WHERE seq = 6")
    assert first_break(logged) == ("missing", 6)


def test_delete_and_renumber_attack_is_reported_missing(logged):
    """Deleting an event and renumbering the rest (head fixed too) is still `missing` at that seq."""
    sql(logged, "DELETE FROM audit_events WHERE seq = 6")
    sql(logged, "UPDATE audit_events SET seq = seq + 1000000 WHERE seq > 6")
    sql(logged, "UPDATE audit_events SET seq = seq - 1000001 WHERE seq > 1000000")
    set_head(logged, len(rows(logged)))
    assert first_break(logged) == ("missing", 6)


def test_swapped_rows_attack_is_reported_reordered(logged):
    """Swapping two events' places is `reordered` at the first of them."""
    sql(logged, "UPDATE audit_events SET seq = -1 WHERE seq = 4")
    sql(logged, "UPDATE audit_events SET seq = 4 WHERE seq = 5")
    sql(logged, "UPDATE audit_events SET seq = 5 WHERE seq = -1")
    assert first_break(logged) == ("reordered", 4)


def test_inserted_forged_event_attack_is_reported_inserted(logged):
    """A forged event that links correctly, slipped in by renumbering later rows, is `inserted`."""
    before = rows(logged)[2]  # seq 3
    forged = Event(
        chain=before["chain"],
        seq=4,
        ts=before["ts"] + 0.001,
        type="decision",
        prev_hash=before["hash"],
        payload={"outcome": "allow", "action": "read"},
    )
    forged_hash = forged.compute_hash()
    sql(logged, "UPDATE audit_events SET seq = seq + 1000000 WHERE seq >= 4")
    sql(logged, "UPDATE audit_events SET seq = seq - 999999 WHERE seq > 1000000")
    sql(
        logged,
        "INSERT INTO audit_events (chain, seq, v, ts, type, payload, prev_hash, hash) "
        "VALUES (:c, 4, :v, :ts, 'decision', :p, :ph, :h)",
        c=forged.chain,
        v=forged.v,
        ts=forged.ts,
        p=canonical_for(forged.v)(forged.payload),
        ph=forged.prev_hash,
        h=forged_hash,
    )
    set_head(logged, len(rows(logged)))
    assert first_break(logged) == ("inserted", 4)


def test_forged_append_beyond_head_attack_is_reported_inserted(logged):
    """An event appended after the recorded head, even one that links, is `inserted` at head+1."""
    last = rows(logged)[-1]
    n = last["seq"] + 1
    forged = Event(
        chain=last["chain"],
        seq=n,
        ts=last["ts"] + 1,
        type="decision",
        prev_hash=last["hash"],
        payload={"outcome": "allow"},
    )
    sql(
        logged,
        "INSERT INTO audit_events (chain, seq, v, ts, type, payload, prev_hash, hash) "
        "VALUES (:c, :s, :v, :ts, 'decision', :p, :ph, :h)",
        c=forged.chain,
        v=forged.v,
        s=n,
        ts=forged.ts,
        p=canonical_for(forged.v)(forged.payload),
        ph=forged.prev_hash,
        h=forged.compute_hash(),
    )
    assert first_break(logged) == ("inserted", n)


def test_truncation_after_checkpoint_attack_is_reported_truncated(logged):
    """Cutting the tail and moving the head back is caught by the stored signed checkpoint."""
    cp = logged.checkpoints.tick(force=True)
    keep = cp.seq - 3
    sql(logged, "DELETE FROM audit_events WHERE seq > :k", k=keep)
    set_head(logged, keep)
    assert first_break(logged) == ("truncated", keep + 1)


def test_chain_rewrite_attack_is_caught_by_checkpoint(logged):
    """Rewriting an event and re-hashing every later one (head too) contradicts the signed checkpoint."""
    cp = logged.checkpoints.tick(force=True)
    all_rows = rows(logged)
    prev = all_rows[3]["hash"]
    for r in all_rows[4:]:
        if r["seq"] == 5:
            r["payload"] = canonical_json({**json.loads(r["payload"]), "outcome": "allow"})
        r["prev_hash"] = prev
        r["hash"] = prev = rehash(r)
        sql(
            logged,
            "UPDATE audit_events SET payload = :p, prev_hash = :ph, hash = :h WHERE seq = :s",
            p=r["payload"],
            ph=r["prev_hash"],
            h=r["hash"],
            s=r["seq"],
        )
    set_head(logged, all_rows[-1]["seq"])
    assert first_break(logged) == ("checkpoint_mismatch", cp.seq)


def test_moved_checkpoint_signature_attack_is_bad_signature(logged):
    """A checkpoint whose head was changed no longer matches its ES256 signature: `bad_signature`."""
    cp = logged.checkpoints.tick(force=True)
    sql(logged, "UPDATE audit_checkpoints SET hash = :h WHERE seq = :s", h=GENESIS_HASH, s=cp.seq)
    assert first_break(logged) == ("bad_signature", cp.seq)


def test_checkpoint_signed_by_attacker_key_is_bad_signature(logged):
    """A checkpoint re-signed with another key under the broker's kid is `bad_signature`."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tether.identity.jwt import sign_jwt

    cp = logged.checkpoints.tick(force=True)
    evil = ec.generate_private_key(ec.SECP256R1())
    jws = sign_jwt(
        {"chain": cp.chain, "seq": cp.seq, "hash": cp.hash, "iat": cp.ts, "exp": cp.ts + 60},
        evil,
        kid=cp.kid,
        typ="tether-audit-checkpoint+jwt",
    )
    sql(logged, "UPDATE audit_checkpoints SET jws = :j WHERE seq = :s", j=jws, s=cp.seq)
    assert first_break(logged) == ("bad_signature", cp.seq)


def test_checkpoint_with_unknown_kid_is_reported(logged):
    """A checkpoint naming a key the store never had is `unknown_key` at its seq."""
    cp = logged.checkpoints.tick(force=True)
    sql(logged, "UPDATE audit_checkpoints SET kid = 'nope' WHERE seq = :s", s=cp.seq)
    assert first_break(logged) == ("unknown_key", cp.seq)


def _older_copy(rt: Runtime, tmp_path: Path, request: pytest.FixtureRequest) -> Database:
    """A real copy of the database as it is now (SQLite backup API / PostgreSQL template copy)."""
    if rt.db.dialect == "sqlite":
        src = rt.db.url.split("///", 1)[1]
        dst = tmp_path / "older.db"
        with sqlite3.connect(src) as s, sqlite3.connect(dst) as d:
            s.backup(d)
        return Database(f"sqlite:///{dst}")
    # PostgreSQL: copy the tables verification reads into a fresh database (a template
    # copy would need every connection of the running broker closed).
    from tether.store import tables as t
    from tether.store.audit_tables import audit_checkpoints

    pg = request.getfixturevalue("pg_server")
    copy = Database(pg.url(request.getfixturevalue("pg_create_database")()))
    copy.migrate()
    with rt.db.engine.connect() as src, copy.engine.begin() as dst:
        for tbl in (t.signing_keys, t.audit_events, t.audit_chains, audit_checkpoints):
            data = [dict(r._mapping) for r in src.execute(tbl.select())]
            if data:
                dst.execute(tbl.insert(), data)
    return copy


def test_restored_older_copy_attack_is_rolled_back(runtime, tmp_path, request):
    """Putting back an older copy of the database is caught against the checkpoint file kept outside it."""
    build_tree(runtime)
    older = _older_copy(runtime, tmp_path, request)
    build_tree(runtime)  # life goes on; the next checkpoint is shipped outside the database
    outside = tmp_path / "kept-elsewhere.jsonl"
    from tether.audit.checkpoint import append_checkpoint_file

    cp = runtime.checkpoints.tick(force=True)
    append_checkpoint_file(outside, cp)
    try:
        older_report = verify_database(older, external=read_checkpoint_file(outside))
        alone = verify_database(older)
    finally:
        older.dispose()
    assert alone.ok  # the copy is internally consistent: only the kept checkpoint exposes it
    b = older_report.breaks[0]
    assert (b.kind, b.seq) == ("rolled_back", alone.chains[runtime.audit.chain_id] + 1)


def test_verify_works_offline_with_the_broker_stopped(settings):
    """After shutdown (final checkpoint written), a fresh process verifies with only the store URL."""
    rt = Runtime.start(settings)
    build_tree(rt)
    rt.close()
    db = Database(settings.store_url)
    try:
        report = verify_database(db)
    finally:
        db.dispose()
    assert report.ok and report.checkpoints == 1

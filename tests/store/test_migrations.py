"""Schema revisions: tables and revisions agree, shipped databases upgrade to a fresh one, locks."""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, MetaData, String, Table, inspect, text

from tether.cli import main
from tether.errors import ConfigError
from tether.runtime import Runtime
from tether.store import migrations
from tether.store.db import Database

FROZEN = Path(__file__).parent / "frozen"
# The last landed schema before Alembic (main at 086dacf, as released in 0.1.0).
SHIPPED = "v0.1.0-086dacf"


def _all_revisions() -> list[str]:
    return [r.revision for r in migrations.script().walk_revisions()][::-1]


@pytest.fixture
def db(store_url):
    d = Database(store_url)
    yield d
    d.dispose()


def _load_frozen(db: Database, name: str = SHIPPED, edit=lambda sql: sql) -> None:
    ddl = edit((FROZEN / f"{name}.{db.dialect}.sql").read_text())
    statements = [s.strip() for s in ddl.split(";\n") if s.strip()]
    with db.engine.begin() as conn:
        for stmt in statements:
            body = "\n".join(ln for ln in stmt.splitlines() if not ln.startswith("--")).strip()
            if body:
                conn.exec_driver_sql(body.rstrip(";"))


def _snapshot(db: Database) -> dict:
    """Everything that defines the schema: tables, columns, keys, indexes (with their SQL)."""
    insp = inspect(db.engine)
    out: dict = {}
    for name in sorted(insp.get_table_names()):
        if name == migrations.VERSION_TABLE:
            continue
        cols = [
            (c["name"], str(c["type"]), c["nullable"], c.get("default"), c.get("autoincrement"))
            for c in insp.get_columns(name)
        ]
        out[name] = {
            "columns": cols,
            "pk": insp.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(name)
            ),
            "uniques": sorted(str(u) for u in insp.get_unique_constraints(name)),
            "fks": sorted(str(f) for f in insp.get_foreign_keys(name)),
        }
    with db.engine.connect() as conn:
        if db.dialect == "sqlite":
            rows = conn.execute(
                text("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'alembic%' ORDER BY name")
            ).all()
        else:
            rows = conn.execute(
                text(
                    "SELECT tablename, indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version' ORDER BY indexname"
                )
            ).all()
    # Whitespace in stored DDL depends on how it was written, not on what it defines.
    out["__raw__"] = [(a, b, re.sub(r"\s+", " ", c or "").strip()) for a, b, c in rows]
    return out


def _fresh_snapshot(tmp_path: Path, dialect: str, pg_url_factory) -> dict:
    url = f"sqlite:///{tmp_path}/fresh.db" if dialect == "sqlite" else pg_url_factory()
    fresh = Database(url)
    try:
        fresh.migrate()
        return _snapshot(fresh)
    finally:
        fresh.dispose()


@pytest.fixture
def fresh_snapshot(request, tmp_path):
    def make(dialect: str) -> dict:
        def pg() -> str:
            server = request.getfixturevalue("pg_server")
            return server.url(request.getfixturevalue("pg_create_database")())

        return _fresh_snapshot(tmp_path, dialect, pg)

    return make


def test_tables_and_revisions_agree(db):
    """A database built by the revisions has exactly the tables' columns, types and indexes."""
    db.migrate()
    assert migrations.drift(db.engine) == []


def test_table_change_without_revision_is_caught(db):
    """The drift check fails when the database and the table definitions disagree."""
    db.migrate()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX ix_stray ON tasks (intent)")
    diffs = migrations.drift(db.engine)
    assert [d[0] for d in diffs] == ["remove_index"] and diffs[0][1].name == "ix_stray"


def test_new_column_without_revision_is_caught(db, monkeypatch):
    """A column added to a table definition but to no revision shows up as drift."""
    db.migrate()
    meta = MetaData()
    for tbl in migrations.target_metadata().sorted_tables:
        tbl.to_metadata(meta)
    Table("tasks", meta, Column("note", String(64)), extend_existing=True)
    monkeypatch.setattr(migrations, "target_metadata", lambda: meta)
    diffs = migrations.drift(db.engine)
    assert [(d[0], d[3].name) for d in diffs] == [("add_column", "note")]


def test_shipped_schema_upgrades_to_a_fresh_one(db, fresh_snapshot):
    """The frozen 0.1.0 DDL, upgraded, equals a fresh database, indexes included; rows survive."""
    _load_frozen(db)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO audit_chains (chain, head_seq, head_hash, updated_at) VALUES ('n1', 0, 'h', 1.0)"
        )
    st = migrations.status(db.engine)
    assert st.legacy and st.state == "pending" and st.pending[0] == "0001"
    assert db.migrate() == st.pending
    assert _snapshot(db) == fresh_snapshot(db.dialect)
    assert migrations.drift(db.engine) == []
    assert not inspect(db.engine).has_table(migrations.LEGACY_TABLE)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT chain, head_hash FROM audit_chains").all() == [("n1", "h")]
    assert migrations.status(db.engine).state == "up_to_date"


def test_database_from_before_the_covering_index_gains_it(db, fresh_snapshot):
    """A store made before the (task, type, ts) audit index gets it on upgrade; the old one goes."""

    def older(sql: str) -> str:
        new = "CREATE INDEX ix_audit_task_type_ts ON audit_events (task_id, type, ts)"
        assert new in sql
        return sql.replace(new, "CREATE INDEX ix_audit_task_ts ON audit_events (task_id, ts)")

    _load_frozen(db, edit=older)
    db.migrate()
    names = {i["name"]: i["column_names"] for i in inspect(db.engine).get_indexes("audit_events")}
    assert names.get("ix_audit_task_type_ts") == ["task_id", "type", "ts"]
    assert "ix_audit_task_ts" not in names
    assert _snapshot(db) == fresh_snapshot(db.dialect)


def test_upgrade_is_idempotent(db):
    """A second upgrade applies nothing and reports the head."""
    assert db.migrate() == _all_revisions()
    assert db.migrate() == []
    assert migrations.status(db.engine).current == migrations.head()


def test_concurrent_starts_apply_each_revision_once(db):
    """Replicas migrating at the same moment serialize on the lock: one applies, none fails."""
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(migrations.migrate(db.engine))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    assert sorted(results, key=len) == [[], [], [], _all_revisions()]


def _stamp_newer(db: Database) -> None:
    db.migrate()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")


def test_newer_database_refuses_to_start(settings):
    """The broker will not start on a schema written by a newer Tether, and says what to do."""
    db = Database(settings.store_url)
    try:
        _stamp_newer(db)
        before = _snapshot(db)
        with pytest.raises(ConfigError) as exc:
            Runtime.start(settings)
        assert exc.value.code == "store_schema_newer"
        assert "`9999`" in exc.value.message and "newer Tether" in exc.value.message
        assert _snapshot(db) == before
    finally:
        db.dispose()


def _cli(settings, *args: str):
    return CliRunner().invoke(
        main, ["store", *args, "--state-dir", str(settings.state_dir), "--store", settings.store_url]
    )


def test_store_status_and_upgrade_cli(settings):
    """`tether store status/upgrade --json` report pending revisions, apply them, then none."""
    r = _cli(settings, "status", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["state"] == "empty"
    r = _cli(settings, "upgrade", "--json")
    assert r.exit_code == 0, r.output
    up = json.loads(r.output)
    assert up["applied"] == _all_revisions() and up["state"] == "up_to_date" and up["from"] is None
    r = _cli(settings, "status")
    assert r.exit_code == 0 and "up to date" in r.output
    r = _cli(settings, "upgrade")
    assert r.exit_code == 0 and "already at the newest revision" in r.output


def test_store_cli_on_newer_database_fails(settings):
    """`tether store status` exits 1 on a newer schema; `upgrade` refuses with the error code."""
    db = Database(settings.store_url)
    try:
        _stamp_newer(db)
    finally:
        db.dispose()
    r = _cli(settings, "status", "--json")
    assert r.exit_code == 1 and json.loads(r.output)["state"] == "newer"
    r = _cli(settings, "upgrade", "--json")
    assert r.exit_code == 1 and json.loads(r.output)["error"]["code"] == "store_schema_newer"


def test_revision_files_follow_the_naming_rule():
    """Every revision is versions/rNNNN_<slug>.py with revision "NNNN", one linear history."""
    sd = migrations.script()
    revs = list(sd.walk_revisions())
    assert len(sd.get_heads()) == 1
    for rev in revs:
        assert re.fullmatch(r"\d{4}", rev.revision), rev.revision
        assert Path(rev.path).name.startswith(f"r{rev.revision}_"), rev.path
    ids = sorted(int(r.revision) for r in revs)
    assert ids == list(range(1, len(ids) + 1))


def test_upgrade_counts_the_last_ten_minutes_of_decisions_per_second(db):
    """Revision 0009 fills the per-second call counts from recent decision events, so a
    burst rule sees the same `calls_last_minute` across the upgrade; older ones and other
    event types are not counted."""
    import time

    _load_frozen(db)
    now = math.floor(time.time())
    rows = [
        (1, now - 5 + 0.25, "decision", "t1"),
        (2, now - 5 + 0.75, "decision", "t1"),
        (3, now - 3 + 0.5, "decision", "t1"),
        (4, now - 3 + 0.5, "task.opened", "t1"),
        (5, now - 4000.5, "decision", "t1"),
        (6, now - 2 + 0.1, "decision", None),
    ]
    with db.engine.begin() as conn:
        for seq, ts, type_, task in rows:
            conn.execute(
                text(
                    "INSERT INTO audit_events (chain, seq, v, ts, type, task_id, payload, prev_hash, hash) "
                    "VALUES ('n1', :seq, 2, :ts, :type, :task, '{}', 'p', 'h')"
                ),
                {"seq": seq, "ts": ts, "type": type_, "task": task},
            )
    db.migrate()
    with db.engine.connect() as conn:
        got = conn.exec_driver_sql("SELECT task_id, second, n FROM task_call_counts ORDER BY second").all()
    assert [tuple(r) for r in got] == [("t1", now - 5, 2), ("t1", now - 3, 1)]

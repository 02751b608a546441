"""`tether store backup|restore|check`: a restored store is trusted only as far as it verifies.

SQLite stores are copied with SQLite's online backup API while a real broker runtime keeps
writing; PostgreSQL copies go through `pg_dump`/`pg_restore` (the documented procedure)
and `tether store check`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from tether.audit.checkpoint import read_checkpoint_file
from tether.cli import main
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.server.instance import claim
from tether.testing import TestTrustDomain, make_settings

READ_Q = {"action": "read", "resource": "tickets.queue"}


def _cli(*args: str) -> tuple[int, Any]:
    r = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    text = r.stdout.strip()
    return r.exit_code, json.loads(text) if text.startswith(("{", "[")) else text


class Broker:
    """A runtime on a state directory, driven over its HTTP API as an agent would."""

    def __init__(self, settings: Any, domain: TestTrustDomain) -> None:
        self.rt = Runtime.start(settings)
        self.client = TestClient(create_app(self.rt), raise_server_exceptions=False)
        self.domain = domain
        self.agent = domain.spiffe_id("orchestrator")

    def open_task(self) -> str:
        svid = self.domain.svid(self.agent, self.rt.settings.broker_audience)
        r = self.client.post(
            "/v1/tasks",
            json={"intent": "support.triage", "description": "t", "ttl_seconds": 600, "scope": [READ_Q]},
            headers={"Authorization": f"Bearer {svid}"},
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["task_token"]
        return token

    def authorize(self, token: str) -> Any:
        return self.client.post("/v1/authorize", json=READ_Q, headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self.client.close()
        self.rt.close()


@pytest.fixture
def state(tmp_path: Path, domain: TestTrustDomain) -> Any:
    def build(store_url: str | None = None) -> Any:
        return make_settings(
            tmp_path / "state",
            store_url=store_url,
            domain=domain,
            # In the file, not as an override: the CLI commands read the state directory.
            config_extra='\n[audit]\ncheckpoint_file = "checkpoints.jsonl"\n',
        )

    return build


def test_restored_store_verifies_and_refuses_tokens_issued_after_the_backup(tmp_path, state, domain):
    """Restore: chains verify against the last external checkpoint; later tokens are unknown."""
    settings = state()
    sd = str(settings.state_dir)
    backup = tmp_path / "backup.db"
    broker = Broker(settings, domain)
    try:
        before = broker.open_task()
        assert broker.authorize(before).json()["decision"] == "allow"
        code, made = _cli("store", "backup", str(backup), "--state-dir", sd)
        assert code == 0, made
        point = {h["chain"]: h["seq"] for h in made["heads"]}
        after = broker.open_task()
        assert broker.authorize(after).json()["decision"] == "allow"
        assert broker.rt.checkpoints.tick(force=True) is not None  # a checkpoint past the backup
    finally:
        broker.close()

    code, restored = _cli("store", "restore", str(backup), "--state-dir", sd, "--yes")
    assert code == 0, restored
    assert restored["verified"]["ok"] is True
    chain = settings.node_id
    assert restored["verified_against"][chain]["seq"] == point[chain]  # the backup's own checkpoint
    assert restored["lost_after_backup_point"][0]["chain"] == chain
    assert Path(restored["previous_store_kept_as"]).exists()

    # What remains outside the store ends at the backup point, and the store verifies on it.
    kept = read_checkpoint_file(settings.state_dir / "checkpoints.jsonl")
    assert max(cp.seq for cp in kept if cp.chain == chain) == point[chain]
    code, verify = _cli("audit", "verify", "--state-dir", sd)
    assert code == 0 and verify["ok"] and verify["checkpoints"] >= 1, verify

    broker = Broker(settings, domain)
    try:
        assert broker.authorize(before).json()["decision"] == "allow"
        r = broker.authorize(after)
        assert (r.status_code, r.json()["code"]) == (401, "token_unknown_task")
    finally:
        broker.close()


def test_restore_refuses_while_a_broker_runs(tmp_path, state):
    """Restore takes the broker's instance lock: with a broker running it changes nothing."""
    settings = state()
    sd = str(settings.state_dir)
    rt = Runtime.start(settings)
    try:
        assert _cli("store", "backup", str(tmp_path / "b.db"), "--state-dir", sd)[0] == 0
        lock = claim(settings.state_dir, settings.listen)  # what `tether serve` holds
        try:
            code, out = _cli("store", "restore", str(tmp_path / "b.db"), "--state-dir", sd, "--yes")
        finally:
            lock.release()
    finally:
        rt.close()
    assert code == 1 and out["error"]["code"] == "broker_running"
    assert not list(settings.state_dir.glob("tether.db.before-restore-*"))


def test_tampered_backup_is_refused(tmp_path, state, domain):
    """A backup whose audit log was edited does not verify and is not restored."""
    settings = state()
    sd = str(settings.state_dir)
    broker = Broker(settings, domain)
    try:
        broker.authorize(broker.open_task())
        assert _cli("store", "backup", str(tmp_path / "b.db"), "--state-dir", sd)[0] == 0
    finally:
        broker.close()
    with sqlite3.connect(tmp_path / "b.db") as conn:
        conn.execute("UPDATE audit_events SET payload = replace(payload, 'allow', 'deny')")
    original = (settings.state_dir / "tether.db").read_bytes()
    code, out = _cli("store", "restore", str(tmp_path / "b.db"), "--state-dir", sd, "--yes")
    assert code == 1 and out["error"]["code"] == "backup_invalid", out
    assert (settings.state_dir / "tether.db").read_bytes() == original
    assert _cli("store", "check", "--state-dir", sd, "--store", f"sqlite:///{tmp_path / 'b.db'}")[0] == 1


def test_a_file_that_is_not_a_store_is_refused(tmp_path, state):
    """Restoring a file that is no Tether store fails with `backup_invalid`."""
    settings = state()
    junk = tmp_path / "junk.db"
    with sqlite3.connect(junk) as conn:
        conn.execute("CREATE TABLE t (x)")
    code, out = _cli("store", "restore", str(junk), "--state-dir", str(settings.state_dir), "--yes")
    assert code == 1 and out["error"]["code"] == "backup_invalid"


def test_backup_never_overwrites_a_file(tmp_path, state):
    """An existing backup file is kept unless --force is given."""
    settings = state()
    rt = Runtime.start(settings)
    try:
        target = tmp_path / "b.db"
        target.write_text("keep me")
        code, out = _cli("store", "backup", str(target), "--state-dir", str(settings.state_dir))
        assert code == 1 and out["error"]["code"] == "backup_exists"
        assert target.read_text() == "keep me"
        assert _cli("store", "backup", str(target), "--state-dir", str(settings.state_dir), "--force")[0] == 0
        assert target.stat().st_mode & 0o777 == 0o600
    finally:
        rt.close()


@pytest.mark.postgresql
def test_postgres_copy_follows_the_documented_pg_dump_procedure(
    tmp_path, state, domain, pg_server, pg_create_database
):
    """PostgreSQL: `store backup` points at pg_dump; a pg_restore'd copy passes `store check`
    and refuses tokens issued after the dump."""
    live = pg_create_database()
    settings = state(pg_server.url(live))
    sd = str(settings.state_dir)
    code, out = _cli(
        "store", "backup", str(tmp_path / "x.db"), "--state-dir", sd, "--store", pg_server.url(live)
    )
    assert code == 1 and out["error"]["code"] == "backup_unsupported" and "pg_dump" in out["error"]["message"]

    dump = tmp_path / "tether.dump"
    broker = Broker(settings, domain)
    try:
        before = broker.open_task()
        # The documented first step: checkpoint every head, outside the store too.
        assert _cli("audit", "checkpoint", "--state-dir", sd, "--store", pg_server.url(live))[0] == 0
        subprocess.run(
            [pg_server.bindir / "pg_dump", "--format=custom", f"--file={dump}", pg_server.conninfo(live)],
            check=True,
            timeout=60,
        )
        after = broker.open_task()
        assert broker.authorize(after).json()["decision"] == "allow"
        assert broker.rt.checkpoints.tick(force=True) is not None  # a checkpoint past the dump
    finally:
        broker.close()

    copy = pg_server.create_database(f"{live}_r", template="template0")
    try:
        subprocess.run(
            [
                pg_server.bindir / "pg_restore",
                "--no-owner",
                f"--dbname={pg_server.conninfo(copy)}",
                str(dump),
            ],
            check=True,
            timeout=60,
        )
        code, report = _cli("store", "check", "--state-dir", sd, "--store", pg_server.url(copy))
        assert code == 0 and report["verified"]["ok"] and report["checkpoints_after_this_copy"], report

        # Another host restoring the dump: the same master key, or the signing keys stay sealed.
        other = make_settings(tmp_path / "state2", store_url=pg_server.url(copy), domain=domain)
        shutil.copy2(settings.state_dir / "master.key", other.state_dir / "master.key")
        broker = Broker(other, domain)
        try:
            assert broker.authorize(before).json()["decision"] == "allow"
            assert broker.authorize(after).json()["code"] == "token_unknown_task"
        finally:
            broker.close()
    finally:
        pg_server.drop_database(copy)

"""`tether keys rewrap`: a new master key, with every issued token and secret still good."""

from __future__ import annotations

import base64
import json
import os

from click.testing import CliRunner
from sqlalchemy import select
from starlette.testclient import TestClient

from tether.cli import main
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.server.instance import claim
from tether.store import tables as t
from tether.store.db import Database

READ_Q = {"action": "read", "resource": "tickets.queue"}


def _new_key(path):
    path.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=") + "\n")
    return path


def _rewrap(settings, key_file):
    r = CliRunner().invoke(
        main,
        [
            "keys",
            "rewrap",
            "--new-key-file",
            str(key_file),
            "--state-dir",
            str(settings.state_dir),
            "--store",
            settings.store_url,
            "--json",
        ],
        catch_exceptions=False,
    )
    return r.exit_code, json.loads(r.stdout)


def _open_task(client, domain, rt):
    svid = domain.svid(domain.spiffe_id("orchestrator"), rt.settings.broker_audience)
    r = client.post(
        "/v1/tasks",
        json={"intent": "support.triage", "description": "t", "ttl_seconds": 600, "scope": [READ_Q]},
        headers={"Authorization": f"Bearer {svid}"},
    )
    assert r.status_code == 201, r.text
    return r.json()["task_token"]


def test_rewrap_keeps_tokens_and_secrets_valid_under_the_new_key(settings, domain, tmp_path):
    """After rewrap the broker starts on the new key; old tokens verify, secrets decrypt."""
    rt = Runtime.start(settings)
    with TestClient(create_app(rt)) as client:
        token = _open_task(client, domain, rt)
    rt.credentials.secrets.set("email", "Bearer sk-upstream")
    rt.close()

    new = _new_key(tmp_path / "new.key")
    code, out = _rewrap(settings, new)
    assert code == 0, out
    assert out["signing_keys"] >= 1 and out["secrets"] == 1
    assert (settings.state_dir / "master.key").read_text().strip() == new.read_text().strip()
    assert (settings.state_dir / "master.key").stat().st_mode & 0o777 == 0o600

    rt = Runtime.start(settings)
    try:
        with TestClient(create_app(rt)) as client:
            r = client.post("/v1/authorize", json=READ_Q, headers={"Authorization": f"Bearer {token}"})
            assert r.json()["decision"] == "allow", r.text
        rt.credentials.secrets._cache.clear()  # read it from the store, through the new key
        assert rt.credentials.secrets.get("email") == ("Authorization", "Bearer sk-upstream")
    finally:
        rt.close()


def _wrapped(settings):
    db = Database(settings.store_url)
    try:
        with db.read() as conn:
            return sorted(conn.execute(select(t.signing_keys.c.kid, t.signing_keys.c.private_enc)).all())
    finally:
        db.dispose()


def test_rewrap_with_the_wrong_current_key_changes_nothing(settings, tmp_path):
    """A store the current key cannot open is refused whole (master_key_mismatch)."""
    Runtime.start(settings).close()
    before = _wrapped(settings)
    _new_key(settings.state_dir / "master.key")  # not the key the store was made with
    code, out = _rewrap(settings, _new_key(tmp_path / "new.key"))
    assert code == 1 and out["error"]["code"] == "master_key_mismatch"
    assert _wrapped(settings) == before


def test_rewrap_refuses_while_a_broker_runs(settings, tmp_path):
    """Rewrap takes the broker's instance lock: with a broker running it changes nothing."""
    Runtime.start(settings).close()
    before = _wrapped(settings)
    key = (settings.state_dir / "master.key").read_text()
    lock = claim(settings.state_dir, settings.listen)
    try:
        code, out = _rewrap(settings, _new_key(tmp_path / "new.key"))
    finally:
        lock.release()
    assert code == 1 and out["error"]["code"] == "broker_running"
    assert _wrapped(settings) == before and (settings.state_dir / "master.key").read_text() == key

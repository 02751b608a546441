"""`secrets.import|inventory|rotate` in a real broker runtime, through the real HTTP gateway
(in front of a real upstream process) and against the tests' throwaway PostgreSQL server."""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from starlette.testclient import TestClient

from gateway.conftest import settings, upstream  # noqa: F401  (fixtures: gateway settings, upstream process)
from gateway.test_http_gateway import routes_for
from tether.audit.chain import capture_events
from tether.errors import Conflict
from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.http import HttpGateway
from tether.legacy import ops
from tether.legacy.scan import scan, value_of
from tether.server.admin import Operator

from .fixture_repo import git, write

OP = Operator(uid=0, pid=0)
SEND = {"action": "send", "resource": "slack-external.post"}


def _repo_with_token(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "legacy"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    token = "xoxb-123456789012-1234567890123-" + "Qw8eRt7yUi6oPa5sDf4gHj3k"
    write(repo, "bot/settings.py", f'SLACK_BOT_TOKEN = "{token}"\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bot")
    return repo, token


def _import_finding(runtime, repo: Path, **extra):
    (f,) = [x for x in scan([repo]).findings if x.kind == "Slack Token"]
    value = value_of(Path(f.root), f.path, f.line, f.fingerprint, f.commit)
    exposures = [{"root": f.root, "path": f.path, "line": f.line, "commit": f.commit, "live": f.live}]
    args = {"service": "slack-external", "value": value, "header": "X-Api-Key", "fingerprint": f.fingerprint,
            "kind": f.kind, "exposures": exposures, "first_seen": f.first_seen, **extra}  # fmt: skip
    return f, ops.secrets_import(runtime, args, OP)


def test_imported_secret_is_injected_by_gateway_never_seen_by_agent(runtime, agent, upstream, tmp_path):  # noqa: F811
    """A scanned secret, imported by fingerprint, reaches the upstream on an allowed call only."""
    repo, token = _repo_with_token(tmp_path)
    with capture_events() as events:
        f, done = _import_finding(runtime, repo)
    assert done == {"name": "slack-external", "service": "slack-external", "fingerprint": f.fingerprint,
                    "connector": "inject"}  # fmt: skip
    (imported,) = [e for e in events if e.type == "secret.imported"]
    assert token not in json.dumps(imported.payload) and imported.payload["exposures_live"] == 1
    upstream.reset()
    gw = HttpGateway(routes_for(upstream), LocalAuthorizer(runtime))
    opened = agent.open([SEND], intent="reporting.weekly")
    assert opened.status_code == 201 and token not in opened.text
    with TestClient(gw, raise_server_exceptions=False) as c:
        r = c.post("/slack/post", headers={"Authorization": f"Bearer {opened.json()['task_token']}"}, json={})
        denied = c.get("/tickets/queue", headers={"Authorization": f"Bearer {opened.json()['task_token']}"})
    assert r.status_code == 200 and token not in r.text and token not in json.dumps(dict(r.headers))
    assert denied.status_code == 403
    (seen,) = upstream.seen()  # the denied call sent nothing
    assert seen["headers"]["x-api-key"] == token
    (row,) = [x for x in ops.secrets_inventory(runtime, {}, OP) if x["name"] == "slack-external"]
    assert row["fingerprint"] == f.fingerprint and row["exposures_live"] == 1 and row["last_used"]
    assert row["exposures"][0]["path"] == "bot/settings.py" and row["brokered"]


def test_import_refuses_value_not_matching_fingerprint(runtime, tmp_path):
    """A value whose fingerprint is not the finding's is refused, and nothing is stored."""
    with pytest.raises(Conflict) as e:
        ops.secrets_import(
            runtime, {"service": "email", "value": "other-value-123", "fingerprint": "fp_00"}, OP
        )
    assert e.value.code == "fingerprint_mismatch"
    assert not [x for x in ops.secrets_inventory(runtime, {}, OP) if x["name"] == "email"]


def _rotator(tmp_path: Path, fail_verify: bool = False) -> tuple[list[str], Path]:
    """A command hook owning a fake provider: a JSON file of the keys it accepts."""
    keys = tmp_path / "provider.json"
    script = tmp_path / "rotate-key"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, secrets, sys
        stage, value = sys.argv[1], sys.stdin.readline().strip()
        keys = json.load(open({str(keys)!r}))
        if stage == "new":
            new = "key-" + secrets.token_hex(12); keys.append(new); print(new)
        elif stage == "verify":
            if {fail_verify!r} or value not in keys: sys.exit("provider refused the new key")
        elif stage == "retire":
            keys.remove(value)
        json.dump(keys, open({str(keys)!r}, "w"))
        """))  # fmt: skip
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return [str(script)], keys


def test_command_rotation_writes_verifies_switches_and_retires(runtime, tmp_path):
    """The hook's new key is verified, then stored; the old one is retired at the provider."""
    argv, keys = _rotator(tmp_path)
    keys.write_text(json.dumps(["key-old-0123456789"]))
    ops.secrets_import(runtime, {"service": "email", "value": "key-old-0123456789",
                                 "rotation": {"kind": "command", "argv": argv}}, OP)  # fmt: skip
    with capture_events() as events:
        out = ops.secrets_rotate(runtime, {"name": "email"}, OP)
    assert out["status"] == "ok"
    (new,) = json.loads(keys.read_text())
    assert runtime.credentials.secrets.get("email")[1] == new
    assert [e.type for e in events] == ["secret.rotated"] and new not in json.dumps(events[0].payload)
    (row,) = [x for x in ops.secrets_inventory(runtime, {}, OP) if x["name"] == "email"]
    assert row["rotation_status"] == "ok" and row["rotated_at"]


def test_failed_rotation_keeps_previous_secret_and_audits_reason(runtime, tmp_path):
    """A new key that fails verification is never switched to; the failure and reason are audited."""
    argv, keys = _rotator(tmp_path, fail_verify=True)
    keys.write_text(json.dumps(["key-old-0123456789"]))
    ops.secrets_import(runtime, {"service": "email", "value": "key-old-0123456789",
                                 "rotation": {"kind": "command", "argv": argv}}, OP)  # fmt: skip
    with capture_events() as events, pytest.raises(Conflict) as e:
        ops.secrets_rotate(runtime, {"name": "email"}, OP)
    assert e.value.code == "rotation_failed" and "provider refused" in e.value.message
    assert runtime.credentials.secrets.get("email")[1] == "key-old-0123456789"
    (failed,) = events
    assert failed.type == "secret.rotation_failed" and failed.payload["stage"] == "verify"
    assert "provider refused the new key" in failed.payload["reason"]
    (row,) = [x for x in ops.secrets_inventory(runtime, {}, OP) if x["name"] == "email"]
    assert row["rotation_status"] == "failed" and "verify" in row["rotation_error"]


@pytest.fixture
def legacy_role(pg_server):
    """A shared legacy login on the throwaway server, dropped afterwards."""
    with pg_server.connect() as c:
        c.execute("DROP ROLE IF EXISTS legacy_app")
        c.execute("CREATE ROLE legacy_app LOGIN PASSWORD 'old-shared-password-1'")
    yield pg_server
    with pg_server.connect() as c:
        c.execute("DROP ROLE IF EXISTS legacy_app")


def _login(pg, password: str, dbname: str = "postgres") -> bool:
    try:
        with psycopg.connect(pg.conninfo(dbname, user="legacy_app"), password=password, connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


@pytest.mark.postgresql
def test_postgres_rotation_retires_old_password(runtime, legacy_role, monkeypatch):
    """ALTER ROLE … PASSWORD: the new password logs in, the old one is refused afterwards."""
    pg = legacy_role
    monkeypatch.setenv("TEST_PG_ADMIN", pg.conninfo())
    spec = {"kind": "postgres", "dsn": pg.conninfo(user="legacy_app"), "admin_dsn_env": "TEST_PG_ADMIN"}
    ops.secrets_import(runtime, {"service": "crm", "name": "crm-db", "value": "old-shared-password-1",
                                 "rotation": spec}, OP)  # fmt: skip
    assert ops.secrets_rotate(runtime, {"name": "crm-db"}, OP)["status"] == "ok"
    new = runtime.credentials.secrets.get("crm-db")[1]
    assert new != "old-shared-password-1" and _login(pg, new)
    assert not _login(pg, "old-shared-password-1")


@pytest.mark.postgresql
def test_postgres_rotation_that_cannot_verify_restores_old_password(runtime, legacy_role, monkeypatch):
    """When the new password cannot be verified, the role gets the old one back and it still works."""
    pg = legacy_role
    monkeypatch.setenv("TEST_PG_ADMIN", pg.conninfo())
    bad = {
        "kind": "postgres",
        "dsn": pg.conninfo("no_such_db", user="legacy_app"),
        "admin_dsn_env": "TEST_PG_ADMIN",
    }
    ops.secrets_import(runtime, {"service": "crm", "name": "crm-db", "value": "old-shared-password-1",
                                 "rotation": bad}, OP)  # fmt: skip
    with capture_events() as events, pytest.raises(Conflict):
        ops.secrets_rotate(runtime, {"name": "crm-db"}, OP)
    assert _login(pg, "old-shared-password-1")
    assert runtime.credentials.secrets.get("crm-db")[1] == "old-shared-password-1"
    assert events[0].payload["stage"] == "verify" and "old-shared-password-1" not in json.dumps(
        events[0].payload
    )


def test_report_counts_inventoried_secret_still_in_code_as_long_lived(runtime, tmp_path):
    """NHI2/NHI7 evidence: an imported secret with a live exposure is a long-lived secret remaining."""
    from types import SimpleNamespace

    from tether.report.evidence import Evidence, _secrets

    repo, _ = _repo_with_token(tmp_path)
    _import_finding(runtime, repo)
    out = Evidence()
    _secrets(out, SimpleNamespace(secrets=ops.secrets_inventory(runtime, {}, OP)))  # type: ignore[arg-type]
    assert out.value("secrets.long_lived") == 1


def test_scheduled_rotation_rotates_a_due_secret(runtime, tmp_path):
    """A secret imported with `every_days` is rotated by the broker's periodic job once due."""
    argv, keys = _rotator(tmp_path)
    keys.write_text(json.dumps(["key-old-0123456789"]))
    spec = {"kind": "command", "argv": argv, "every_days": 1e-6}  # due 0.09 s after import
    ops.secrets_import(runtime, {"service": "email", "value": "key-old-0123456789", "rotation": spec}, OP)
    job = ops.scheduled_rotation(runtime, runtime.credentials.secrets)
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (row,) = [x for x in ops.secrets_inventory(runtime, {}, OP) if x["name"] == "email"]
        if time.time() - row["value_since"] > 0.2:
            break
    with capture_events() as events:
        job()
    assert [e.type for e in events] == ["secret.rotated"]
    assert runtime.credentials.secrets.get("email")[1] == json.loads(keys.read_text())[0]


def test_rotation_schedule_must_be_positive_days(runtime):
    """`every_days` of zero, negative or not a number is refused at import."""
    from tether.errors import InvalidRequest

    for bad in (0, -1, "7", True):
        spec = {"kind": "command", "argv": ["true"], "every_days": bad}
        with pytest.raises(InvalidRequest) as e:
            ops.secrets_import(runtime, {"service": "email", "value": "v-0123456789", "rotation": spec}, OP)
        assert e.value.code == "rotation_invalid"

"""A legacy shared PostgreSQL login imported: per-task roles carry a copy of its privileges,
the usage report names who still connects with it, and retiring it refuses the old password.

Real PostgreSQL (the tests' throwaway server); the connector's admin is the NOSUPERUSER
`tether_admin`. The legacy login owns `orders`, was granted SELECT on `notes` (whose owner
gave the admin GRANT OPTION on it) and holds nothing on `vault`."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from _credhelp import wait_until

from legacy.fixture_repo import git, write
from tether.audit.chain import capture_events
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.errors import Conflict, NotFound, TetherError
from tether.legacy import ops
from tether.model import Grant, Workload
from tether.runtime import Runtime, init_state_dir
from tether.server.admin import Operator
from tether.testing import broker_process, make_settings

OP = Operator(uid=0, pid=0)
AGENT = Workload("spiffe://support.example/orchestrator", "support.example", "test")
POLICY = """
@id("legacydb-triage")
permit (principal, action, resource in Tether::Service::"legacydb")
when { context.task.intent == "support.triage" };
"""


@pytest.fixture
def legacy(pg_server: Any, target_db: str) -> Iterator[tuple[str, str]]:
    """A shared login (name, password) owning `orders`, reading `notes`, nothing on `vault`."""
    login, password = f"legacy_{secrets.token_hex(4)}", "old-shared-" + secrets.token_hex(8)
    with pg_server.connect() as c:
        c.execute(f"CREATE ROLE {login} LOGIN PASSWORD '{password}'")
    with pg_server.connect(target_db) as c:
        c.execute(f"ALTER TABLE orders OWNER TO {login}")
        c.execute("CREATE TABLE notes (id int primary key, body text)")
        c.execute("INSERT INTO notes VALUES (1, 'hello')")
        c.execute(f"GRANT SELECT ON notes TO {login}")
        c.execute("GRANT SELECT ON notes TO tether_admin WITH GRANT OPTION")
        c.execute("CREATE TABLE vault (id int)")
        c.execute(
            f"CREATE TABLE ledger (id serial primary key, amount int); ALTER TABLE ledger OWNER TO {login}"
        )
        c.execute(f"GRANT SELECT ON payroll TO {login}")  # the admin may not pass this one on
    yield login, password
    with pg_server.connect() as c:
        for (role,) in c.execute(
            "SELECT rolname FROM pg_roles WHERE pg_has_role(rolname, %s, 'MEMBER') AND rolname <> %s",
            (login, login),
        ).fetchall():
            c.execute(f'REVOKE {login} FROM "{role}"')
    with pg_server.connect(target_db) as c:
        c.execute(f"DROP OWNED BY {login}")
    with pg_server.connect() as c:
        c.execute(f"DROP ROLE IF EXISTS {login}")


def _runtime(
    tmp_path: Path, sqlite_url: str, domain: Any, admin_url: str, options: dict[str, Any]
) -> Runtime:
    state = tmp_path / "state"
    settings = make_settings(
        state,
        store_url=sqlite_url,
        domain=domain,
        overrides={"environment": "prod"},
        config_extra=f'\n[credentials.postgres]\nlegacydb = "{admin_url}"\n',
    )
    doc = yaml.safe_load((state / "catalog.yaml").read_text())
    doc["services"].append(
        {
            "id": "legacydb",
            "sensitivity": "internal",
            "environment": "prod",
            "egress": "internal",
            "owner": "team-billing",
            "connector": "postgres",
            "options": options,
        }
    )
    (state / "catalog.yaml").write_text(yaml.safe_dump(doc))
    (state / "policies" / "50-legacydb.cedar").write_text(POLICY)
    return Runtime.start(settings)


@pytest.fixture
def rt(tmp_path, sqlite_url, domain, admin_url, legacy) -> Iterator[Runtime]:
    """A broker whose catalog hands out `legacy`'s privileges on `orders`, `notes` and `vault`."""
    runtime = _runtime(
        tmp_path,
        sqlite_url,
        domain,
        admin_url,
        {
            "shared_login": legacy[0],
            "tables": ["public.orders", "public.notes", "public.vault", "public.ledger"],
        },
    )
    yield runtime
    runtime.close()


def _credential(rt: Runtime, action: str) -> tuple[str, dict[str, Any]]:
    o = rt.broker.open_task(AGENT, OpenTaskRequest("support.triage", "t", (Grant(action, "legacydb"),), 300))
    cred = rt.broker.authorize(o.token, AuthorizeRequest(action, "legacydb")).credential
    assert cred is not None
    return o.task.id, dict(cred.for_agent or {})


def _can(dsn: str, statement: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            c.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return False
    return True


def _logs_in(dsn: str, **kw: Any) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=5, **kw):
            return True
    except psycopg.OperationalError:
        return False


def test_per_task_roles_carry_a_copy_of_the_shared_logins_privileges(rt, legacy):
    """Imported: a task's role reads what the login reads, writes only with `write`, never beyond it."""
    login, password = legacy
    out = ops.secrets_pg_import(rt, {"service": "legacydb", "login": login, "password": password}, OP)
    (copy,) = out["copies"]
    assert {t["table"]: t["privileges"] for t in copy["tables"]} == {
        "public.ledger": ["DELETE", "INSERT", "SELECT", "UPDATE"],
        "public.ledger_id_seq": ["USAGE"],  # or an insert into its serial column would fail
        "public.notes": ["SELECT"],
        "public.orders": ["DELETE", "INSERT", "SELECT", "UPDATE"],
    }
    assert out["admin_joined"] and out["name"] == f"pg.legacydb.{login}"
    task_id, reader = _credential(rt, "read")
    assert reader["username"].startswith("tether_l_") and reader["username"] != login
    assert _can(reader["dsn"], "SELECT * FROM orders") and _can(reader["dsn"], "SELECT * FROM notes")
    assert not _can(reader["dsn"], "INSERT INTO orders VALUES (9, 1)")  # `read` maps to SELECT only
    assert not _can(reader["dsn"], "SELECT * FROM vault")  # the login holds nothing there
    assert not _can(reader["dsn"], "SELECT * FROM payroll")  # not in the catalog
    assert not _can(reader["dsn"], f"SET ROLE {login}")  # a copy of its grants, not its membership
    _, writer = _credential(rt, "write")
    assert _can(writer["dsn"], "INSERT INTO orders VALUES (9, 1)")
    assert _can(writer["dsn"], "INSERT INTO ledger (amount) VALUES (5)")
    assert not _can(writer["dsn"], "UPDATE notes SET body = 'x'")  # the login may not either
    rt.broker.close_task(task_id, by="test")
    wait_until(lambda: not _logs_in(reader["dsn"]), what="the closed task's role refused")


def test_usage_report_names_who_still_uses_the_login_and_retire_waits_for_them(
    rt, legacy, pg_server, target_db
):
    """A live session blocks retirement and is named; once gone, retiring refuses the old password."""
    login, password = legacy
    ops.secrets_pg_import(rt, {"service": "legacydb", "login": login, "password": password}, OP)
    name = f"pg.legacydb.{login}"
    old_dsn = pg_server.conninfo(target_db, user=login)
    cron = psycopg.connect(old_dsn, password=password, application_name="billing-cron", autocommit=True)
    try:
        report = ops.secrets_pg_usage(rt, {"name": name}, OP)
        (client,) = report["clients"]
        assert report["sessions"] == 1 and not report["safe_to_retire"] and not report["hidden"]
        assert (client["application"], client["client"], client["database"]) == (
            "billing-cron",
            "local socket",
            target_db,
        )
        assert client["since"] and client["last_active"]
        assert report["statements"] == {"available": False, "reason": report["statements"]["reason"]}
        assert "not installed" in report["statements"]["reason"]
        with pytest.raises(Conflict) as e:
            ops.secrets_pg_retire(rt, {"name": name}, OP)
        assert e.value.code == "shared_login_in_use" and "billing-cron" in e.value.message
    finally:
        cron.close()
    wait_until(lambda: ops.secrets_pg_usage(rt, {"name": name}, OP)["safe_to_retire"], what="session gone")
    (seen,) = ops.secrets_pg_usage(rt, {"name": name}, OP)["seen"]  # gone now, but remembered
    assert (seen["application"], seen["client"], seen["sessions_max"]) == ("billing-cron", "local socket", 1)
    with capture_events() as events:
        done = ops.secrets_pg_retire(rt, {"name": name}, OP)
    assert done["status"] == "retired" and done["sessions_ended"] == 0
    assert not _logs_in(old_dsn, password=password)  # the shared password no longer logs in
    _, reader = _credential(rt, "read")  # ... while per-task roles keep working
    assert _can(reader["dsn"], "SELECT * FROM orders")
    (retired,) = [e for e in events if e.type == "secret.rotated"]
    assert retired.payload["status"] == "retired" and password not in str(retired.payload)
    (row,) = [r for r in ops.secrets_inventory(rt, {}, OP) if r["name"] == name]
    assert row["rotation_status"] == "retired" and row["kind"] == "PostgreSQL shared login"


def test_forced_retirement_ends_the_sessions_still_open(rt, legacy, pg_server, target_db):
    """`--force` retires a login in use and terminates its sessions."""
    login, password = legacy
    ops.secrets_pg_import(rt, {"service": "legacydb", "login": login}, OP)  # named, no password
    s = psycopg.connect(pg_server.conninfo(target_db, user=login), password=password, autocommit=True)
    done = ops.secrets_pg_retire(rt, {"name": f"pg.legacydb.{login}", "force": True}, OP)
    assert done["sessions_ended"] == 1
    with pytest.raises(psycopg.OperationalError):
        s.execute("SELECT 1")
    s.close()


def test_import_refuses_a_password_that_does_not_log_in(rt, legacy):
    """A found password that no longer logs in as the login is refused, and nothing is recorded."""
    with pytest.raises(Conflict) as e:
        ops.secrets_pg_import(rt, {"service": "legacydb", "login": legacy[0], "password": "stale-pw-1"}, OP)
    assert e.value.code == "shared_login_refused"
    assert not [r for r in ops.secrets_inventory(rt, {}, OP) if legacy[0] in r["name"]]


def test_import_names_the_catalog_option_it_needs(rt, legacy):
    """A login the catalog does not hand out is refused with the exact option to add."""
    with pytest.raises(Conflict) as e:
        ops.secrets_pg_import(rt, {"service": "legacydb", "login": "other_app"}, OP)
    assert e.value.code == "shared_login_not_in_catalog" and "shared_login: other_app" in e.value.message


def test_privilege_the_admin_cannot_pass_on_is_named(tmp_path, sqlite_url, domain, admin_url, legacy):
    """SELECT on `payroll` is held by the login but not grantable by the admin: the error names it."""
    runtime = _runtime(
        tmp_path, sqlite_url, domain, admin_url, {"shared_login": legacy[0], "tables": ["public.payroll"]}
    )
    try:
        with pytest.raises(TetherError) as e:
            ops.secrets_pg_import(runtime, {"service": "legacydb", "login": legacy[0]}, OP)
        assert e.value.code == "connector_misconfigured" and "SELECT on public.payroll" in e.value.message
    finally:
        runtime.close()


def test_superuser_or_unknown_shared_login_is_refused(tmp_path, sqlite_url, domain, admin_url):
    """A superuser's privileges cannot be copied as grants; an unknown role is named."""
    for login, code in (("postgres", "shared_login_superuser"), ("no_such_login", "unknown_role")):
        runtime = _runtime(
            tmp_path / login,
            sqlite_url.replace(".db", f"-{login}.db"),
            domain,
            admin_url,
            {"shared_login": login},
        )
        try:
            with pytest.raises((Conflict, NotFound)) as e:
                ops.secrets_pg_import(runtime, {"service": "legacydb", "login": login}, OP)
            assert e.value.code == code and login in e.value.message
        finally:
            runtime.close()


def test_scan_then_pg_import_usage_retire_through_the_cli(
    tmp_path, legacy, admin_url, domain, pg_server, target_db
):
    """The runbook: a URL found by the scan is imported by fingerprint, reported on and retired."""

    login, password = legacy
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo, "config/app.env", f"DATABASE_URL=postgresql://{login}:{password}@db.internal:5432/billing\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")
    state = tmp_path / "state"
    init_state_dir(state)
    doc = yaml.safe_load((state / "catalog.yaml").read_text())
    doc["services"].append(
        {
            "id": "legacydb",
            "sensitivity": "internal",
            "environment": "prod",
            "egress": "internal",
            "owner": "team-billing",
            "connector": "postgres",
            "options": {"shared_login": login, "tables": ["public.orders"]},
        }
    )
    (state / "catalog.yaml").write_text(yaml.safe_dump(doc))
    tether = str(Path(sys.executable).parent / "tether")

    def run(*args: str, ok: bool = True) -> Any:
        r = subprocess.run(
            [tether, "secrets", *args, "--state-dir", str(state), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (r.returncode == 0) == ok, f"{args}: {r.stdout}\n{r.stderr}"
        assert password not in r.stdout + r.stderr
        return json.loads(r.stdout)

    extra = f'\n[credentials.postgres]\nlegacydb = "{admin_url}"\n'
    with broker_process(state, domain, config_extra=extra):
        (finding,) = [
            f for f in run("scan", str(repo), ok=False)["findings"] if f["kind"] == "PostgreSQL Password"
        ]
        out = run("pg-import", finding["fingerprint"], "--from", str(repo), "--service", "legacydb")
        assert out["login"] == login and out["fingerprint"] == finding["fingerprint"]
        assert out["copies"][0]["tables"] == [
            {"table": "public.orders", "privileges": ["DELETE", "INSERT", "SELECT", "UPDATE"]}
        ]
        with psycopg.connect(
            pg_server.conninfo(target_db, user=login), password=password, application_name="etl"
        ):
            used = run("pg-usage", out["name"])
            assert used["clients"][0]["application"] == "etl" and not used["safe_to_retire"]
            refused = run("pg-retire", out["name"], ok=False)
            assert refused["error"]["code"] == "shared_login_in_use"
        wait_until(lambda: run("pg-usage", out["name"])["safe_to_retire"], what="the session gone")
        assert run("pg-retire", out["name"])["status"] == "retired"
        (row,) = [r for r in run("inventory") if r["name"] == out["name"]]
        assert row["rotation_status"] == "retired" and row["exposures_live"] == 1


def test_connectors_check_names_shared_login_privileges_the_admin_cannot_pass_on(legacy, admin_url):
    """`tether connectors check`: a shared login's copy the admin cannot grant fails with the fix."""
    from tether.catalog import Resource
    from tether.credentials.connectors.pgcheck import check_postgres

    def entry(rid: str, **options: Any) -> Resource:
        return Resource(rid, "dataset", "legacydb", 1, "prod", "internal", "o", "postgres", options)

    rep = check_postgres("legacydb", admin_url, [entry("legacydb.notes", shared_login=legacy[0],
                                                       tables=["public.notes"]),
                                                 entry("legacydb.payroll", shared_login=legacy[0],
                                                       tables=["public.payroll"]),
                                                 entry("legacydb.ghost", shared_login="no_such_login")],
                         probe=False)  # fmt: skip
    found = [c for c in rep.to_dict()["checks"] if c["name"].startswith("shared login")]
    assert [c["status"] for c in found] == ["ok", "fail", "fail"], found
    assert "SELECT on public.payroll" in found[1]["detail"] and "pg-import" in found[1]["fix"]
    assert "does not exist" in found[2]["detail"]


def test_sampler_remembers_who_connected_between_reports(rt, legacy, pg_server, target_db):
    """The minute job records each client seen with the login; a retired login is no longer sampled."""
    from tether.legacy import inventory

    login, password = legacy
    name = ops.secrets_pg_import(rt, {"service": "legacydb", "login": login}, OP)["name"]
    job = ops.sample_shared_logins(rt)
    with psycopg.connect(
        pg_server.conninfo(target_db, user=login), password=password, application_name="nightly"
    ):
        job()
    with rt.db.read() as conn:
        (seen,) = inventory.sightings(conn, name)
        assert seen["application"] == "nightly" and seen["last_seen"] >= seen["first_seen"]
        assert [w["name"] for w in inventory.shared_logins(conn)] == [name]
    ops.secrets_pg_retire(rt, {"name": name}, OP)
    with rt.db.read() as conn:
        assert inventory.shared_logins(conn) == []

"""The `postgres` connector against a real PostgreSQL server: dynamic login roles."""

from __future__ import annotations

import psycopg
import pytest
from _credhelp import connect_as, role_exists, tether_roles, wait_until

from tether.credentials import leases as ls
from tether.testing import capture_events

pytestmark = pytest.mark.postgresql


@pytest.fixture
def analyst(pg_client, domain, pg_runtime):
    from tests.conftest import Agent  # type: ignore[import-not-found]

    return Agent(pg_client, domain, pg_runtime, "analyst")


def _open(agent, resources=("analytics.orders",), **kw):
    r = agent.open([{"action": "read", "resource": x} for x in resources], **kw)
    assert r.status_code == 201, r.text
    return r.json()


def _cred(agent, token, resource="analytics.orders"):
    d = agent.authorize(token, "read", resource)
    assert d.status_code == 200, d.text
    body = d.json()
    assert body["decision"] == "allow", body
    return body["credential"]


def test_role_reads_its_table_and_nothing_else(analyst):
    """A role minted for one table can read that table and is refused every other one."""
    t = _open(analyst)
    cred = _cred(analyst, t["task_token"])
    assert cred["kind"] == "postgres" and set(cred) >= {"dsn", "username", "password", "expires_at"}
    with connect_as(cred) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM payroll")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO orders VALUES (3, 1)")


def test_closed_task_role_cannot_log_in_and_is_gone(analyst, pg_server):
    """After the task closes the role is dropped and its password no longer logs in."""
    t = _open(analyst)
    cred = _cred(analyst, t["task_token"])
    r = analyst.client.post(
        f"/v1/tasks/{t['task_id']}/close", headers={"Authorization": f"Bearer {t['task_token']}"}
    )
    assert r.status_code == 200, r.text
    wait_until(lambda: not role_exists(pg_server, cred["username"]), what="DROP ROLE")
    with pytest.raises(psycopg.OperationalError):
        connect_as(cred)


def test_delegated_subtask_role_dropped_when_parent_closes(analyst, pg_client, domain, pg_runtime, pg_server):
    """Closing a parent task drops the role minted for its delegated sub-task."""
    from tests.conftest import Agent  # type: ignore[import-not-found]

    parent = _open(analyst)
    child_agent = Agent(pg_client, domain, pg_runtime, "helper")
    d = pg_client.post(
        f"/v1/tasks/{parent['task_id']}/delegations",
        json={
            "child": child_agent.spiffe_id,
            "ttl_seconds": 120,
            "scope": [{"action": "read", "resource": "analytics.orders"}],
        },
        headers={"Authorization": f"Bearer {parent['task_token']}"},
    )
    assert d.status_code == 201, d.text
    child = child_agent.open(None, delegation=d.json()["delegation"])
    assert child.status_code == 201, child.text
    cred = _cred(child_agent, child.json()["task_token"])
    assert role_exists(pg_server, cred["username"])
    pg_runtime.broker.close_task(parent["task_id"], by="test")
    wait_until(lambda: not role_exists(pg_server, cred["username"]), what="child role dropped")


def test_sql_injection_in_catalog_table_name_is_inert(analyst, pg_server, target_db, pg_runtime):
    """A catalog table name with quotes and a semicolon is one odd identifier, never SQL."""
    t = _open(analyst, ("analytics.evil",))
    d = analyst.authorize(t["task_token"], "read", "analytics.evil").json()
    assert d["decision"] == "deny" and d["code"] == "connector_failed"
    with pg_server.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM payroll").fetchone() == (1,)
    wait_until(lambda: not tether_roles(pg_server), what="no half-created role")
    with pg_runtime.db.read() as conn:
        assert not [x for x in ls.list_leases(conn) if x.state in ls.LIVE]


def test_connector_down_denies_and_leaves_nothing(tmp_path, store_url, domain, pg_server):
    """An unreachable PostgreSQL denies with `connector_unavailable` and mints nothing."""
    from _credhelp import DATASETS, add_analytics
    from starlette.testclient import TestClient
    from tests.conftest import Agent  # type: ignore[import-not-found]

    from tether.runtime import Runtime, init_state_dir
    from tether.server.app import create_app
    from tether.testing import make_settings

    state = tmp_path / "state"
    init_state_dir(state)
    add_analytics(state, DATASETS)
    dead = f"postgresql://postgres@/nope?host={tmp_path}/no-such-socket-dir"
    s = make_settings(
        state,
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod"},
        config_extra=f'\n[credentials.postgres]\nanalytics = "{dead}"\n',
    )
    rt = Runtime.start(s)
    try:
        with TestClient(create_app(rt), raise_server_exceptions=False) as c:
            a = Agent(c, domain, rt, "analyst")
            t = _open(a)
            d = a.authorize(t["task_token"], "read", "analytics.orders").json()
            assert d["decision"] == "deny" and d["code"] == "connector_unavailable"
            assert "credential" not in d
            with rt.db.read() as conn:
                assert not [x for x in ls.list_leases(conn) if x.state in ls.LIVE]
    finally:
        rt.close()


def test_revocation_terminates_open_sessions(analyst, pg_runtime):
    """A session opened with the credential is ended when the task is revoked."""
    t = _open(analyst)
    cred = _cred(analyst, t["task_token"])
    conn = connect_as(cred)
    try:
        pg_runtime.broker.revoke(task_id=t["task_id"], by="test")

        def dead() -> bool:
            try:
                conn.execute("SELECT 1")
                return False
            except psycopg.Error:
                return True

        wait_until(dead, what="session terminated")
    finally:
        conn.close()


def test_revocation_handles_owned_objects_and_extra_grants(
    analyst, pg_server, target_db, pg_runtime, admin_url
):
    """A role that was given more (CREATE on a schema) and owns a table is still dropped by
    the NOSUPERUSER admin; what it owned now belongs to the admin."""
    t = _open(analyst)
    cred = _cred(analyst, t["task_token"])
    with pg_server.connect(target_db) as su:
        su.execute("CREATE SCHEMA scratchpad AUTHORIZATION tether_admin")
    with psycopg.connect(admin_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
        admin.execute(f'GRANT CREATE, USAGE ON SCHEMA scratchpad TO "{cred["username"]}"')
    with connect_as(cred) as conn:
        conn.execute("CREATE TABLE scratchpad.scratch (x int)")
    pg_runtime.broker.close_task(t["task_id"], by="test")
    wait_until(lambda: not role_exists(pg_server, cred["username"]), what="DROP ROLE")
    with pg_server.connect(target_db) as su:
        owner = su.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'scratch'").fetchone()
    assert owner == ("tether_admin",)


def test_grant_by_another_grantor_is_cut_and_reported_irrevocable(
    tmp_path, store_url, domain, pg_server, target_db, admin_url
):
    """A privilege a superuser gave the role keeps a NOSUPERUSER admin from dropping it: the
    role is still cut (no login), and the lease says irrevocable with the SQLSTATE."""
    from _credhelp import DATASETS, add_analytics
    from starlette.testclient import TestClient
    from tests.conftest import Agent  # type: ignore[import-not-found]

    from tether.runtime import Runtime, init_state_dir
    from tether.server.app import create_app
    from tether.testing import make_settings

    state = tmp_path / "state"
    init_state_dir(state)
    add_analytics(state, DATASETS)
    s = make_settings(
        state,
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod", "credentials": {"revoke_max_attempts": 1}},
        config_extra=f'\n[credentials.postgres]\nanalytics = "{admin_url}"\n',
    )
    rt = Runtime.start(s)
    try:
        with TestClient(create_app(rt), raise_server_exceptions=False) as c:
            a = Agent(c, domain, rt, "analyst")
            t = _open(a)
            cred = _cred(a, t["task_token"])
            with pg_server.connect(target_db) as su:
                su.execute(f'GRANT CREATE ON SCHEMA public TO "{cred["username"]}"')
            rt.broker.close_task(t["task_id"], by="test")

            def irrevocable():
                with rt.db.read() as conn:
                    return ls.list_leases(conn, irrevocable=True)

            rows = wait_until(irrevocable, timeout=20, what="irrevocable lease")
            assert rows[0].id == cred["lease_id"] and "2BP01" in (rows[0].last_error or "")
            with pytest.raises(psycopg.OperationalError):
                connect_as(cred)
    finally:
        rt.close()
        with pg_server.connect(target_db) as conn:
            conn.execute(f'DROP OWNED BY "{cred["username"]}"')
            conn.execute(f'DROP ROLE "{cred["username"]}"')


def test_sweep_drops_tagged_role_without_lease_and_keeps_foreign_ones(pg_runtime, pg_server):
    """The reaper drops this broker's orphan roles, never another deployment's."""
    creds = pg_runtime.credentials
    pgc = creds.service.connectors["postgres"]
    with pg_server.connect() as conn:
        conn.execute("CREATE ROLE tether_l_orphan0001 LOGIN")
        conn.execute(f"COMMENT ON ROLE tether_l_orphan0001 IS 'tether:{pgc._tag} lease lse_x task t'")
        conn.execute("CREATE ROLE tether_l_foreign0001 LOGIN")
        conn.execute("COMMENT ON ROLE tether_l_foreign0001 IS 'tether:someoneelse lease lse_y task t'")
    try:
        creds.reaper.reap()
        assert not role_exists(pg_server, "tether_l_orphan0001")
        assert role_exists(pg_server, "tether_l_foreign0001")
    finally:
        with pg_server.connect() as conn:
            conn.execute("DROP ROLE IF EXISTS tether_l_foreign0001")
            conn.execute("DROP ROLE IF EXISTS tether_l_orphan0001")


def test_minted_and_revoked_events_carry_ids_never_the_password(analyst, pg_runtime, pg_server):
    """Mint and revoke are audited with lease, task and connector, and no secret."""
    t = _open(analyst)
    with capture_events() as events:
        cred = _cred(analyst, t["task_token"])
        pg_runtime.broker.close_task(t["task_id"], by="test")
        wait_until(lambda: any(e.type == "credential.revoked" for e in events), what="revoked event")
    minted = [e for e in events if e.type == "credential.minted"]
    revoked = [e for e in events if e.type == "credential.revoked"]
    assert minted[0].lease_id == cred["lease_id"] == revoked[0].lease_id
    assert minted[0].task_id == t["task_id"] and minted[0].payload["connector"] == "postgres"
    assert all(cred["password"] not in str(e.to_dict()) for e in events)


def test_unrevocable_lease_is_retried_then_marked_irrevocable(
    tmp_path, store_url, domain, pg_server, target_db, admin_url
):
    """A revocation that keeps failing is retried, then irrevocable: event, counter, listed."""
    from _credhelp import DATASETS, add_analytics
    from starlette.testclient import TestClient
    from tests.conftest import Agent  # type: ignore[import-not-found]

    from tether.runtime import Runtime, init_state_dir
    from tether.server.app import create_app
    from tether.testing import make_settings

    state = tmp_path / "state"
    init_state_dir(state)
    add_analytics(state, DATASETS)
    s = make_settings(
        state,
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod", "credentials": {"revoke_max_attempts": 2}},
        config_extra=f'\n[credentials.postgres]\nanalytics = "{admin_url}"\n',
    )
    rt = Runtime.start(s)
    try:
        with TestClient(create_app(rt), raise_server_exceptions=False) as c, capture_events() as events:
            a = Agent(c, domain, rt, "analyst")
            t = _open(a)
            cred = _cred(a, t["task_token"])
            creds = rt.credentials
            # The target becomes unreachable for the broker (a real failure, not a mock).
            creds.service.connectors["postgres"].set_dsn(
                "analytics", f"postgresql://x@/x?host={tmp_path}/gone"
            )
            rt.broker.close_task(t["task_id"], by="test")

            def irrevocable():
                with rt.db.read() as conn:
                    return ls.list_leases(conn, irrevocable=True)

            rows = wait_until(irrevocable, timeout=20, what="irrevocable lease")
            assert rows[0].id == cred["lease_id"] and rows[0].attempts == 2
            # The reaper counts after its transaction commits: the row can be seen first.
            wait_until(
                lambda: creds.service.counters["irrevocable"] > 0, timeout=10, what="irrevocable counter"
            )
            assert creds.service.counters["irrevocable"] == 1
            assert any(e.type == "credential.irrevocable" and e.lease_id == cred["lease_id"] for e in events)
    finally:
        rt.close()
        with pg_server.connect(target_db) as conn:
            conn.execute(f'DROP OWNED BY "{cred["username"]}"')
            conn.execute(f'DROP ROLE "{cred["username"]}"')


def test_close_cuts_access_before_any_cleanup(analyst, pg_server, pg_runtime):
    """With the cleanup worker stopped, closing still makes the role refuse logins and ends its
    session at once (cut first); the role itself is dropped only by the later cleanup."""
    creds = pg_runtime.credentials
    t = _open(analyst)
    cred = _cred(analyst, t["task_token"])
    session = connect_as(cred)
    creds.reaper.stop()  # stops cleanup; the cut has its own worker
    try:
        pg_runtime.broker.close_task(t["task_id"], by="test")

        def cut() -> bool:
            with pg_server.connect() as conn:
                can_login = conn.execute(
                    "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (cred["username"],)
                ).fetchone()
                sessions = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (cred["username"],)
                ).fetchone()
            return can_login == (False,) and sessions == (0,)

        wait_until(cut, what="NOLOGIN and no session")
        assert role_exists(pg_server, cred["username"])  # not cleaned up: only cut
        with pytest.raises(psycopg.OperationalError):
            connect_as(cred)
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
        with pg_runtime.db.read() as conn:
            assert ls.get_lease(conn, cred["lease_id"]).state is ls.LeaseState.REVOKING
    finally:
        session.close()
    creds.reaper.reap()
    assert not role_exists(pg_server, cred["username"])


def test_hanging_target_does_not_stall_another_targets_cut(tmp_path, pg_server, admin_url):
    """A target that accepts connections and never answers delays only its own cuts: the other
    target's role is cut long before the hanging one's connect timeout."""
    import socket
    import time

    from tether.credentials.connectors.postgres import PostgresConnector
    from tether.credentials.cut import Cutter
    from tether.credentials.leases import Lease, LeaseState, Revocation

    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(hang_dir / ".s.PGSQL.5432"))
    listener.listen(8)  # accepts (the kernel does), never answers the startup packet
    pgc = PostgresConnector(
        {"analytics": admin_url, "stuck": f"postgresql://x@/x?host={hang_dir}&port=5432"}, tag="hangtest"
    )
    with pg_server.connect() as conn:
        conn.execute("CREATE ROLE tether_l_hangtest0001 LOGIN")

    def lease(service: str, role: str) -> Lease:
        return Lease(
            "lse_" + role,
            "tsk_x",
            "tsk_x",
            "a",
            "postgres",
            service,
            service,
            "read@x",
            0.0,
            1e12,
            LeaseState.REVOKING,
            Revocation.PENDING,
            "node-1",
            {"role": role, "service": service},
        )

    cutter = Cutter({"postgres": pgc})
    try:
        started = time.monotonic()
        cutter.submit([lease("stuck", "tether_l_stuck00000001"), lease("analytics", "tether_l_hangtest0001")])

        def cut() -> bool:
            with pg_server.connect() as conn:
                row = conn.execute(
                    "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tether_l_hangtest0001'"
                ).fetchone()
            return row == (False,)

        wait_until(cut, timeout=4, what="the healthy target's cut")
        assert time.monotonic() - started < 4.5  # the stuck target's connect timeout is 5 s
    finally:
        cutter.stop(timeout=0.1)
        pgc.close()
        listener.close()
        with pg_server.connect() as conn:
            conn.execute("DROP ROLE IF EXISTS tether_l_hangtest0001")


def test_privilege_without_grant_option_denies_instead_of_a_credential_that_cannot_read(
    analyst, pg_server, target_db, pg_runtime
):
    """An admin that holds SELECT without GRANT OPTION gets only a WARNING from GRANT; the mint
    is denied (`connector_misconfigured`, naming the table) instead of issuing a useless role."""
    with pg_server.connect(target_db) as su:
        su.execute("GRANT SELECT ON payroll TO tether_admin")  # no WITH GRANT OPTION
    t = _open(analyst, ("analytics.payroll",))
    d = analyst.authorize(t["task_token"], "read", "analytics.payroll").json()
    assert d["decision"] == "deny" and d["code"] == "connector_misconfigured", d
    msg = d["reasons"][0]["message"]
    assert "payroll" in msg and "SELECT" in msg and "tether connectors check" in msg, msg
    assert not tether_roles(pg_server)

"""`tether connectors check` against the throwaway PostgreSQL: what the admin role lacks."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tether.cli import main

pytestmark = pytest.mark.postgresql


@pytest.fixture
def pg_settings(tmp_path, domain, admin_url):
    """A state dir whose `analytics` target is the NOSUPERUSER admin (the store is not used)."""
    from _credhelp import DATASETS, add_analytics

    from tether.runtime import init_state_dir
    from tether.testing import make_settings

    state = tmp_path / "state"
    init_state_dir(state)
    add_analytics(state, DATASETS)
    extra = f'\n[credentials.postgres]\nanalytics = "{admin_url}"\n'
    return make_settings(state, domain=domain, overrides={"environment": "prod"}, config_extra=extra)


def _check(settings, *args):
    r = CliRunner().invoke(main, ["connectors", "check", "--state-dir", str(settings.state_dir), *args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def _by_name(report):
    return {c["name"]: c for c in report["targets"][0]["checks"]}


def test_least_privileged_admin_passes_role_and_probe_and_names_ungrantable_tables(pg_settings):
    """The NOSUPERUSER admin passes the role checks and the live probe; a table it cannot
    grant and a table that does not exist fail, each naming the catalog entry and the fix."""
    code, out = _check(pg_settings, "--json")
    assert code == 1, out
    checks = _by_name(json.loads(out))
    assert checks["admin role"]["status"] == "ok" and checks["probe"]["status"] == "ok"
    assert checks["table public.orders"]["status"] == "ok"
    payroll = checks["table public.payroll"]
    assert payroll["status"] == "fail" and "analytics.payroll" in payroll["detail"]
    assert 'OWNER TO "tether_admin"' in payroll["fix"]
    evil = [c for n, c in checks.items() if "DROP TABLE" in n]
    assert evil and evil[0]["status"] == "fail" and "does not exist" in evil[0]["detail"]


def test_admin_without_createrole_is_told_exactly_what_to_alter(pg_settings, pg_server, target_db):
    """An admin without CREATEROLE fails the role check and the probe's first step, with the ALTER ROLE."""
    with pg_server.connect() as conn:
        conn.execute("CREATE ROLE tether_weak LOGIN NOCREATEROLE PASSWORD 'weak-pw'")
    try:
        cfg = pg_settings.state_dir / "tether.toml"
        weak = pg_server.url(target_db, user="tether_weak", password="weak-pw")
        cfg.write_text(cfg.read_text().replace(pg_settings.credentials.postgres["analytics"], weak))
        code, out = _check(pg_settings, "--json", "--service", "analytics")
        assert code == 1
        checks = _by_name(json.loads(out))
        assert checks["admin role"]["status"] == "fail"
        assert checks["admin role"]["fix"] == 'ALTER ROLE "tether_weak" CREATEROLE'
        assert checks["probe"]["status"] == "fail" and "create a role" in checks["probe"]["detail"]
        assert "42501" in checks["probe"]["detail"]
        code, text = _check(pg_settings, "--no-probe")
        assert code == 1 and 'ALTER ROLE "tether_weak" CREATEROLE' in text and "FAIL" in text
    finally:
        with pg_server.connect() as conn:
            conn.execute("DROP ROLE tether_weak")


def test_unreachable_target_fails_connect_and_unknown_service_is_a_coded_error(pg_settings, tmp_path):
    """A target that cannot be reached fails `connect`; `--service` naming no target is an error code."""
    cfg = pg_settings.state_dir / "tether.toml"
    dead = f"postgresql://x@/x?host={tmp_path}/no-socket"
    cfg.write_text(cfg.read_text().replace(pg_settings.credentials.postgres["analytics"], dead))
    code, out = _check(pg_settings, "--json")
    assert code == 1 and _by_name(json.loads(out))["connect"]["status"] == "fail"
    code, out = _check(pg_settings, "--json", "--service", "nope")
    assert code == 1 and json.loads(out)["error"]["code"] == "unknown_service"

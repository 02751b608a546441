"""Fixtures for the credentials tests: a PostgreSQL target database with an `analytics`
service in the catalog (connector `postgres`) and a broker configured to mint roles on it.

The broker's admin role on the target is NOT a superuser: `tether_admin` has exactly what
docs/credentials.md asks for (LOGIN, CREATEROLE, INHERIT) and owns the tables it may grant
(`orders`); `payroll` belongs to someone else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _credhelp import DATASETS, add_analytics
from starlette.testclient import TestClient

from tether.runtime import Runtime, init_state_dir
from tether.server.app import create_app
from tether.testing import make_settings

ADMIN, ADMIN_PW = "tether_admin", "admin-pw-not-secret"


@pytest.fixture(scope="session")
def pg_admin(pg_server: Any) -> tuple[str, str]:
    """The least-privileged admin role (name, password) the connector runs as."""
    with pg_server.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ADMIN,)).fetchone() is None:
            conn.execute(
                f"CREATE ROLE {ADMIN} LOGIN CREATEROLE INHERIT NOSUPERUSER NOCREATEDB PASSWORD '{ADMIN_PW}'"
            )
    return ADMIN, ADMIN_PW


@pytest.fixture
def target_db(pg_server: Any, pg_create_database: Callable[..., str], pg_admin: tuple[str, str]) -> str:
    """A database with `orders` (the admin's, granted) and `payroll` (not the admin's)."""
    name = pg_create_database()
    with pg_server.connect(name) as conn:
        conn.execute("CREATE TABLE orders (id int primary key, total int)")
        conn.execute("INSERT INTO orders VALUES (1, 100), (2, 250)")
        conn.execute(f"ALTER TABLE orders OWNER TO {ADMIN}")
        conn.execute("CREATE TABLE payroll (id int primary key, salary int)")
        conn.execute("INSERT INTO payroll VALUES (1, 99999)")
    return name


@pytest.fixture
def admin_url(pg_server: Any, target_db: str, pg_admin: tuple[str, str]) -> str:
    """The connector's admin connection string (the NOSUPERUSER `tether_admin`)."""
    return str(pg_server.url(target_db, user=pg_admin[0], password=pg_admin[1]))


@pytest.fixture
def pg_settings(tmp_path: Path, store_url: str, domain: Any, admin_url: str) -> Any:
    state = tmp_path / "state"
    init_state_dir(state)
    add_analytics(state, DATASETS)
    extra = f'\n[credentials.postgres]\nanalytics = "{admin_url}"\n'
    return make_settings(
        state, store_url=store_url, domain=domain, overrides={"environment": "prod"}, config_extra=extra
    )


@pytest.fixture
def pg_runtime(pg_settings: Any) -> Iterator[Runtime]:
    rt = Runtime.start(pg_settings)
    yield rt
    rt.close()


@pytest.fixture
def pg_client(pg_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(pg_runtime), raise_server_exceptions=False) as c:
        yield c

"""Fixtures for the credentials tests: a PostgreSQL target database with an `analytics`
service in the catalog (connector `postgres`), a policy that lets triage read it, and
helpers to wait (bounded, no sleeps) for the revoker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from starlette.testclient import TestClient

from tether.runtime import Runtime
from tether.server.app import create_app
from tether.runtime import init_state_dir
from tether.testing import make_settings

ANALYTICS_POLICY = """
@id("analytics-read")
@reason("triage may read the analytics orders")
permit (principal, action in Tether::Action::"reads", resource in Tether::Service::"analytics")
when { context.task.intent == "support.triage" };
"""


def add_analytics(state_dir: Path, tables: dict[str, list[str]]) -> None:
    """Add an `analytics` service (postgres connector) with one dataset per entry."""
    path = state_dir / "catalog.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["services"].append({"id": "analytics", "sensitivity": "internal", "environment": "prod",
                            "egress": "internal", "owner": "team-data", "connector": "postgres",
                            "options": {"tables": ["public.orders"]}})
    for dataset, tbls in tables.items():
        doc["datasets"].append({"id": dataset, "service": "analytics", "options": {"tables": tbls}})
    path.write_text(yaml.safe_dump(doc))
    (state_dir / "policies" / "50-analytics.cedar").write_text(ANALYTICS_POLICY)


@pytest.fixture
def target_db(pg_server: Any, pg_create_database: Callable[..., str]) -> str:
    """A database with `orders` (granted) and `payroll` (never granted)."""
    name = pg_create_database()
    with pg_server.connect(name) as conn:
        conn.execute("CREATE TABLE orders (id int primary key, total int)")
        conn.execute("INSERT INTO orders VALUES (1, 100), (2, 250)")
        conn.execute("CREATE TABLE payroll (id int primary key, salary int)")
        conn.execute("INSERT INTO payroll VALUES (1, 99999)")
    return name


DATASETS = {"analytics.orders": ["public.orders"], "analytics.payroll": ["public.payroll"],
            "analytics.evil": ['public.orders"; DROP TABLE payroll; --']}


@pytest.fixture
def pg_settings(tmp_path: Path, store_url: str, domain: Any, pg_server: Any, target_db: str) -> Any:
    state = tmp_path / "state"
    init_state_dir(state)
    add_analytics(state, DATASETS)
    extra = f'\n[credentials.postgres]\nanalytics = "{pg_server.url(target_db)}"\n'
    return make_settings(state, store_url=store_url, domain=domain, overrides={"environment": "prod"},
                         config_extra=extra)


@pytest.fixture
def pg_runtime(pg_settings: Any) -> Iterator[Runtime]:
    rt = Runtime.start(pg_settings)
    yield rt
    rt.close()


@pytest.fixture
def pg_client(pg_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(pg_runtime), raise_server_exceptions=False) as c:
        yield c


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def role_exists(pg_server: Any, role: str) -> bool:
    with pg_server.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def tether_roles(pg_server: Any) -> set[str]:
    with pg_server.connect() as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tether\\_l\\_%'").fetchall()
    return {r[0] for r in rows}


def connect_as(cred: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(cred["dsn"], connect_timeout=5, autocommit=True)

"""Fixtures for the credentials tests: a PostgreSQL target database with an `analytics`
service in the catalog (connector `postgres`) and a broker configured to mint roles on it."""

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


@pytest.fixture
def pg_settings(tmp_path: Path, store_url: str, domain: Any, pg_server: Any, target_db: str) -> Any:
    state = tmp_path / "state"
    init_state_dir(state)
    add_analytics(state, DATASETS)
    extra = f'\n[credentials.postgres]\nanalytics = "{pg_server.url(target_db)}"\n'
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

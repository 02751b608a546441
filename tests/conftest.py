"""Shared fixtures: storage URLs for both backends and a throwaway PostgreSQL server.

Fixtures
  sqlite_url          ``sqlite:////<tmp_path>/tether.db`` (file in the test's tmp_path)
  pg_server           session-wide throwaway server (``tests/_pg.py:PgServer``): socket_dir,
                      port, conninfo(), url(), connect(), create_database(), drop_database()
  pg_create_database  factory: ``pg_create_database() -> name``; dropped after the test
  pg_url              SQLAlchemy URL of a fresh, empty PostgreSQL database for this test
  store_url           parametrized ``sqlite`` / ``postgresql``: every store-backed test
                      runs against both backends. For a test that starts a broker through
                      ``runtime`` the store is already at the schema's head (see below)
  schema_sqlite /     a SQLite file / a PostgreSQL database migrated once per session (per
  schema_pg           xdist worker); ``runtime`` starts on a copy instead of migrating an
                      empty store (alembic on PostgreSQL costs about a second per test).
                      Migrations themselves are pinned by tests/store on empty stores
  domain              a test SPIFFE trust domain (``support.example``) that signs SVIDs
  settings / runtime  a broker state dir with the example catalog and policies (environment
                      ``prod``) on ``store_url``, and a started ``Runtime``
  client              a Starlette TestClient on the broker API
  agent / make_agent  an ``Agent`` driving the API with SVIDs of the test domain

PostgreSQL tests carry the ``postgresql`` marker (deselect with ``-m "not postgresql"``).
When the server binaries are missing they are skipped, unless ``CI`` or
``TETHER_TEST_PG`` is set: then they fail, so CI can never go green without them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from tether.runtime import Runtime
from tether.server.admin import AdminServer
from tether.server.app import create_app
from tether.store.db import Database
from tether.testing import TEST_STORE_TIMEOUT_MS, TestTrustDomain, make_settings

try:  # tests/ may or may not become a package; support both import styles.
    from . import _pg  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import _pg  # type: ignore[import-not-found,no-redef,unused-ignore]


# Brokers that tests start as processes (`tether up`, the demo, CLI tests) read their
# settings from the environment: give them the same generous store budget as
# `make_settings` (see there why). A test about the budget sets its own.
os.environ.setdefault("TETHER_LIMITS__STORE_TIMEOUT_MS", str(TEST_STORE_TIMEOUT_MS))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs the throwaway PostgreSQL server (tests/_pg.py)")


def pytest_report_header(config: pytest.Config) -> str:
    try:
        where = str(_pg.find_bindir())
    except _pg.PgUnavailable:
        where = "NOT FOUND"
    mode = "required" if _pg.pg_required() else "optional (skipped if missing)"
    return f"tether: postgresql server binaries: {where}; postgresql tests {mode}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the server directly (e.g. dynamic-role tests) get the marker too.
    for item in items:
        if "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgresql)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[_pg.PgServer]:
    """One throwaway PostgreSQL server for the whole session, removed at the end."""
    missing = None
    try:
        _pg.find_bindir()
    except _pg.PgUnavailable as exc:
        missing = str(exc)
    if missing and _pg.pg_required():
        pytest.fail(f"{missing} (required because CI/TETHER_TEST_PG is set)", pytrace=False)
    if missing:
        pytest.skip(missing)
    with _pg.running_server() as server:
        yield server


@pytest.fixture
def pg_create_database(pg_server: _pg.PgServer) -> Iterator[Callable[..., str]]:
    """Factory for fresh databases (from the template); all dropped after the test."""
    created: list[str] = []

    def create(name: str | None = None, template: str = _pg.TEMPLATE_DB) -> str:
        created.append(pg_server.create_database(name, template=template))
        return created[-1]

    yield create
    for name in created:
        pg_server.drop_database(name)


@pytest.fixture
def pg_url(pg_server: _pg.PgServer, pg_create_database: Callable[..., str]) -> str:
    """SQLAlchemy URL of a fresh PostgreSQL database private to this test."""
    return pg_server.url(pg_create_database())


@pytest.fixture(scope="session")
def schema_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store at the schema's head, migrated once per session; copy it, never open it."""
    path = tmp_path_factory.mktemp("schema") / "tether.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.dispose()
    # The last connection's close checkpoints the WAL: the main file holds everything.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def schema_pg(pg_server: _pg.PgServer) -> str:
    """A PostgreSQL database at the schema's head, migrated once per session: a template."""
    name = pg_server.create_database(f"schema_{_pg.worker_tag()}{os.getpid()}")
    db = Database(pg_server.url(name))
    db.migrate()
    db.dispose()  # CREATE DATABASE … TEMPLATE needs it without connections
    return name


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """SQLAlchemy URL of a (not yet created) SQLite file private to this test."""
    return f"sqlite:///{os.path.join(tmp_path, 'tether.db')}"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    ]
)
def store_url(request: pytest.FixtureRequest) -> str:
    """A storage URL for each backend; tests using it run once per backend."""
    if request.param == "postgresql" and "runtime" in request.fixturenames:
        # A broker migrates at start; give it a copy of the migrated schema instead.
        pg_server: _pg.PgServer = request.getfixturevalue("pg_server")
        create: Callable[..., str] = request.getfixturevalue("pg_create_database")
        return pg_server.url(create(template=request.getfixturevalue("schema_pg")))
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


def _sqlite_at_head(url: str, request: pytest.FixtureRequest) -> None:
    """A SQLite store that does not exist yet starts as a copy of the migrated schema."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database)
    if not path.exists() and path.parent.is_dir():
        shutil.copyfile(request.getfixturevalue("schema_sqlite"), path)


# -- broker fixtures -----------------------------------------------------------------

DOMAIN = "support.example"


@pytest.fixture(scope="session")
def domain() -> TestTrustDomain:
    return TestTrustDomain(DOMAIN)


@pytest.fixture
def settings(tmp_path: Path, store_url: str, domain: TestTrustDomain) -> Any:
    return make_settings(
        tmp_path / "state",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod", "identity": {"dpop": "optional"}},
    )


@pytest.fixture
def runtime(settings: Any, request: pytest.FixtureRequest) -> Iterator[Runtime]:
    _sqlite_at_head(settings.store_url, request)
    rt = Runtime.start(settings)
    yield rt
    rt.close()


@pytest.fixture
def admin(runtime: Runtime) -> Iterator[Path]:
    """This runtime's admin socket, served on a loop of its own; yields the state dir the
    CLI is pointed at (``--state-dir``)."""
    loop = asyncio.new_event_loop()
    server = AdminServer(runtime, runtime.settings.state_dir / "admin.sock")
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield runtime.settings.state_dir
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(server.close())
        loop.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as c:
        yield c


class Agent:
    """Drives the HTTP API as an agent would."""

    def __init__(self, client: TestClient, domain: TestTrustDomain, runtime: Runtime, path: str) -> None:
        self.client, self.domain, self.rt = client, domain, runtime
        self.spiffe_id = domain.spiffe_id(path)

    def svid(self) -> str:
        return self.domain.svid(self.spiffe_id, self.rt.settings.broker_audience)

    def open(
        self,
        scope: list[dict[str, str]] | None = None,
        *,
        intent: str = "support.triage",
        ttl: int = 600,
        **extra: Any,
    ) -> Any:
        body: dict[str, Any] = {"intent": intent, "description": "test", "ttl_seconds": ttl, **extra}
        if scope is not None:
            body["scope"] = scope
        return self.client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {self.svid()}"})

    def authorize(
        self, token: str, action: str, resource: str, arguments: dict[str, Any] | None = None
    ) -> Any:
        body: dict[str, Any] = {"action": action, "resource": resource}
        if arguments is not None:
            body["arguments"] = arguments
        return self.client.post("/v1/authorize", json=body, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def agent(client: TestClient, domain: TestTrustDomain, runtime: Runtime) -> Agent:
    return Agent(client, domain, runtime, "orchestrator")


@pytest.fixture
def make_agent(client: TestClient, domain: TestTrustDomain, runtime: Runtime) -> Any:
    return lambda path: Agent(client, domain, runtime, path)

"""Pins the test infrastructure itself: storage URLs and the throwaway PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa

try:
    from . import _pg  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import _pg  # type: ignore[import-not-found,no-redef,unused-ignore]


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(store_url)
    yield eng
    eng.dispose()


def test_store_url_connects(store_url: str, engine: sa.Engine, request: pytest.FixtureRequest):
    backend = request.node.callspec.id.split("-")[0]
    assert engine.dialect.name == backend
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_an_isolated_database(engine: sa.Engine, round_: int):
    # Both rounds create the same table; whichever runs second proves isolation.
    assert not sa.inspect(engine).has_table("infra_marker")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE infra_marker (round INTEGER)"))
        conn.execute(sa.text("INSERT INTO infra_marker VALUES (:r)"), {"r": round_})
    assert sa.inspect(engine).has_table("infra_marker")


def test_sqlite_url_is_a_file_in_tmp_path(sqlite_url: str, tmp_path):
    assert sqlite_url == f"sqlite:///{tmp_path}/tether.db"


def test_pg_url_shape(pg_server: _pg.PgServer, pg_url: str):
    url = sa.make_url(pg_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.username == "postgres"
    assert url.host is None
    assert url.query["host"] == str(pg_server.socket_dir)
    assert url.database


def test_admin_connection_is_superuser_on_unix_socket(pg_server: _pg.PgServer):
    with pg_server.connect() as conn:
        row = conn.execute(
            "SELECT current_setting('is_superuser'), current_setting('listen_addresses'),"
            " current_setting('max_connections')::int"
        ).fetchone()
    assert row == ("on", "", 200)
    mode = stat.S_IMODE(os.stat(pg_server.socket_dir).st_mode)
    assert mode == 0o777


def test_create_and_drop_database(pg_server: _pg.PgServer, pg_create_database: Callable[..., str]):
    name = pg_create_database()
    exists = "SELECT count(*) FROM pg_database WHERE datname = %s"
    with pg_server.connect() as conn:
        assert conn.execute(exists, (name,)).fetchone() == (1,)
        # A connection left open by a test must not block the drop.
        with pg_server.connect(name):
            pg_server.drop_database(name)
        assert conn.execute(exists, (name,)).fetchone() == (0,)


def test_login_roles_need_a_password(pg_server: _pg.PgServer, pg_url: str):
    dbname = sa.make_url(pg_url).database
    assert dbname
    with pg_server.connect() as conn:
        conn.execute("CREATE ROLE infra_role LOGIN PASSWORD 's3cret'")
    try:
        eng = sa.create_engine(pg_server.url(dbname, user="infra_role", password="s3cret"))
        with eng.connect() as c:
            assert c.execute(sa.text("SELECT current_user")).scalar_one() == "infra_role"
        eng.dispose()
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(pg_server.conninfo(dbname, user="infra_role")).close()
    finally:
        with pg_server.connect() as conn:
            conn.execute("DROP ROLE infra_role")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")
def test_other_uids_can_connect(pg_server: _pg.PgServer, pg_create_database: Callable[..., str]):
    psql = pg_server.bindir / "psql"
    if not psql.exists():
        psql_path = shutil.which("psql")
        # psql ships with the server packages `make test` installs; its absence is a broken setup.
        assert psql_path is not None, "psql not found beside the PostgreSQL server binaries"
        psql = type(psql)(psql_path)
    name = pg_create_database()
    out = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(psql), "-X", "-At", "-c", "SELECT 1",
         pg_server.conninfo(name)],
        capture_output=True, text=True, timeout=30, check=False, cwd="/",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(
    ("env", "required"),
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "false"}, False),
        ({"TETHER_TEST_PG": "1"}, True),
        ({"TETHER_TEST_PG": "0"}, False),
    ],
)
def test_pg_required_when_ci_or_forced(env: dict[str, str], required: bool):
    assert _pg.pg_required(env) is required

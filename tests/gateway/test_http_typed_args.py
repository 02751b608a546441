"""HTTP gateway: path and query parameters reach policy as typed, canonical arguments
(real upstream process, in-process broker). Folder-rule attacks through the query string
are denied; a query parameter cannot shadow a path parameter."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.http import HttpGateway
from tether.gateway.routes import parse_routes

ROUTES = """
[[routes]]
prefix = "/files"
upstream = "{up}"
service = "tickets"
  [[routes.rules]]
  method = "GET"
  path = "/export"
  action = "http:read"
  resource = "tickets.export"
  [[routes.rules]]
  method = "GET"
  path = "/by/{{owner}}"
  action = "http:read"
  resource = "tickets.export"
"""
TOOL = (
    "  - id: tickets.export\n    service: tickets\n    arguments: {file: {type: path, roots: [/exports]}}\n"
)
POLICY = """
@id("exports-public-only")
@reason("only exports under /exports/public")
forbid (principal, action == Tether::Action::"http:read", resource == Tether::Tool::"tickets.export")
unless { context.args.paths.isEmpty() || context.args.under.contains("/exports/public") };
"""


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """Argument handling is backend-independent; these run on SQLite."""
    return sqlite_url


@pytest.fixture
def settings(settings: Any) -> Any:
    settings.catalog_path.write_text(
        settings.catalog_path.read_text().replace("\ntools:\n", "\ntools:\n" + TOOL, 1)
    )
    (settings.policy_path / "60-exports.cedar").write_text(POLICY)
    return settings


@pytest.fixture
def gateway(runtime: Any, upstream: Any, credentials: Any) -> Iterator[TestClient]:
    upstream.reset()
    table = parse_routes(tomllib.loads(ROUTES.format(up=upstream.url)), "routes.toml")
    table.check_catalog(runtime.catalog)
    with TestClient(HttpGateway(table, LocalAuthorizer(runtime)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def auth(agent: Any) -> dict[str, str]:
    r = agent.open([{"action": "http:read", "resource": "tickets.export"}])
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['task_token']}"}


def test_query_argument_under_the_allowed_folder_is_forwarded(gateway: TestClient, auth: Any) -> None:
    """`?file=/exports/public/a.csv` is allowed and forwarded with its query string."""
    r = gateway.get("/files/export?file=/exports/public/a.csv", headers=auth)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("file=/exports/public/../secret/x.csv", "policy_forbid"),  # dot-dot traversal
        ("file=/exports/public/%252e%252e/secret/x.csv", "policy_forbid"),  # encoded traversal
        ("file=/exports/public/a.csv&file=/exports/secret/b.csv", "policy_forbid"),  # list packing
        ("file=/etc/passwd", "path_outside_roots"),  # out of the declared roots
        ("file=/exports/public/a%00.csv", "argument_invalid"),  # NUL byte
    ],
)
def test_query_string_folder_attacks_are_denied(
    gateway: TestClient, auth: Any, query: str, code: str
) -> None:
    """Traversal, encoded traversal, list packing, escape and NUL in the query string: 403."""
    r = gateway.get(f"/files/export?{query}", headers=auth)
    assert (r.status_code, r.json()["code"]) == (403, code), r.text


def test_query_parameter_shadowing_a_path_parameter_is_refused(gateway: TestClient, auth: Any) -> None:
    """`/by/acme?owner=evil`: the upstream may read either, so the request is a 400."""
    r = gateway.get("/files/by/acme?owner=evil", headers=auth)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_query")

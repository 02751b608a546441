"""Console fixtures: a signed-in browser-like client on the in-memory app, CSRF helpers."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def sign_in(client: TestClient, runtime: Any) -> TestClient:
    """Sign in as the operator at the machine (the link `tether console` prints)."""
    link = runtime.console.operator_link(os.getuid())
    parts = urlsplit(link)
    r = client.get(f"{parts.path}?{parts.query}")
    assert r.status_code == 200 and "Signed in" in r.text
    return client


def csrf_of(client: TestClient, path: str) -> str:
    m = CSRF.search(client.get(path).text)
    assert m, f"no CSRF token on {path}"
    return m.group(1)


@pytest.fixture
def operator(client: TestClient, runtime: Any) -> TestClient:
    return sign_in(client, runtime)


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """The console's pages only read through the store's own queries (tested on both
    backends elsewhere): SQLite keeps these web-layer tests quick."""
    return sqlite_url

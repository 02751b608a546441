"""Hardening tests drive the HTTP edge; the store backend does not change what the edge
decodes, so they run on SQLite (the frozen-store test starts its own PostgreSQL server)."""

from __future__ import annotations

import pytest


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    return sqlite_url

"""Persistent state: SQLAlchemy Core over SQLite (WAL) or PostgreSQL."""

from tether.store.db import Database
from tether.store.migrations import migrate

__all__ = ["Database", "migrate"]

"""Persistent state: SQLAlchemy Core over SQLite (WAL) or PostgreSQL."""

from tether.store.db import Database
from tether.store.migrations import Migration, migrate, register

__all__ = ["Database", "Migration", "migrate", "register"]

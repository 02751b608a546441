"""Ordered, idempotent schema migrations recorded in ``schema_migrations``.

A migration is a version, a name and a function of a connection. Append new steps to
``MIGRATIONS``; never edit one that has shipped. Each step runs in its own transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Table, insert, inspect, select, text

from tether.store import audit_tables, gateway_tables
from tether.store import credentials_tables as ct
from tether.store import identity_tables as it
from tether.store import tables as t


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def create_tables(*tbls: Table) -> Callable[[Connection], None]:
    def step(conn: Connection) -> None:
        for tbl in tbls:
            tbl.create(conn, checkfirst=True)

    return step


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "core: keys, tasks, delegations, approvals, audit",
        create_tables(
            t.signing_keys,
            t.tasks,
            t.delegations,
            t.approvals,
            t.resource_uses,
            t.audit_events,
            t.audit_chains,
        ),
    ),
    Migration(
        20,
        "credentials: leases, revocation feed, injected secrets",
        create_tables(ct.leases, ct.revocations, ct.secrets),
    ),
    Migration(30, "gateway: pinned MCP tool definitions", create_tables(gateway_tables.tool_pins)),
    Migration(
        10,
        "identity: workload registration entries, DPoP replay cache",
        create_tables(it.workload_entries, it.dpop_jtis),
    ),
    Migration(40, "audit: signed checkpoints", create_tables(audit_tables.audit_checkpoints)),
]


def register(migration: Migration) -> None:
    """Add a migration from another module (leases, workloads, …) before ``migrate``."""
    if any(m.version == migration.version for m in MIGRATIONS):
        existing = next(m for m in MIGRATIONS if m.version == migration.version)
        if existing.name != migration.name:
            raise ValueError(f"migration {migration.version} registered twice")
        return
    MIGRATIONS.append(migration)
    MIGRATIONS.sort(key=lambda m: m.version)


def current_version(engine: Engine) -> int:
    if not inspect(engine).has_table("schema_migrations"):
        return 0
    with engine.connect() as conn:
        versions = conn.execute(select(t.schema_migrations.c.version)).scalars().all()
    return max(versions, default=0)


# Any constant works; it only has to be the same for every replica of this schema.
_PG_MIGRATION_LOCK = 0x7E7E_0001


def migrate(engine: Engine) -> list[int]:
    """Apply every pending migration; return the versions applied.

    On PostgreSQL an advisory lock serializes replicas that start at the same moment, so
    two of them never run one migration twice; SQLite's write lock does the same there.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            conn.commit()
        try:
            return _migrate(conn)
        finally:
            if engine.dialect.name == "postgresql":
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()


def _migrate(conn: Connection) -> list[int]:
    with conn.begin():
        t.schema_migrations.create(conn, checkfirst=True)
    with conn.begin():
        done = set(conn.execute(select(t.schema_migrations.c.version)).scalars().all())
    applied: list[int] = []
    for m in sorted(MIGRATIONS, key=lambda m: m.version):
        if m.version in done:
            continue
        with conn.begin():
            m.apply(conn)
            conn.execute(
                insert(t.schema_migrations).values(version=m.version, name=m.name, applied_at=time.time())
            )
        applied.append(m.version)
    return applied

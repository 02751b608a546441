"""Baseline: the schema of every module as it stood when the store moved to Alembic.

The tables are a frozen copy (never import the live table modules here: they move on,
this must not). ``upgrade`` also adopts a database made by the pre-Alembic migrator
(it has ``schema_migrations`` and no ``alembic_version``): tables and indexes that
migrator never added are created, the ``(task, ts)`` audit index it left behind is
replaced by the covering ``(task, type, ts)`` one, and its bookkeeping table is dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_m = MetaData()

Table(
    "signing_keys",
    _m,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("private_enc", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("retires_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
_tasks = Table(
    "tasks",
    _m,
    Column("id", String(64), primary_key=True),
    Column("agent", String(2048), nullable=False),
    Column("attestation", String(32), nullable=False),
    Column("agent_attrs", Text, nullable=False),
    Column("delegator_sub", String(512)),
    Column("delegator_iss", String(512)),
    Column("intent", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("parent_id", String(64), index=True),
    Column("root_id", String(64), nullable=False, index=True),
    Column("depth", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("act_chain", Text, nullable=False),
    Column("cnf_jkt", String(128)),
    Column("closed_at", Float),
    Column("max_sensitivity_read", Integer, nullable=False),
)
Index("ix_tasks_agent_state", _tasks.c.agent, _tasks.c.state)
Index("ix_tasks_state_expires", _tasks.c.state, _tasks.c.expires_at)
Table(
    "delegations",
    _m,
    Column("id", String(64), primary_key=True),
    Column("parent_task_id", String(64), nullable=False, index=True),
    Column("child_agent", String(2048), nullable=False),
    Column("scope", Text, nullable=False),
    Column("ttl_seconds", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("redeemed_task_id", String(64)),
)
_approvals = Table(
    "approvals",
    _m,
    Column("id", String(64), primary_key=True),
    Column("task_id", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("resource", String(256), nullable=False),
    Column("args_digest", String(80), nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("decided_by", String(256)),
    Column("decided_at", Float),
    Column("decision_id", String(64)),
)
Index(
    "ix_approvals_binding",
    _approvals.c.task_id,
    _approvals.c.action,
    _approvals.c.resource,
    _approvals.c.args_digest,
)
Table(
    "resource_uses",
    _m,
    Column("agent", String(2048), primary_key=True),
    Column("resource", String(256), primary_key=True),
    Column("first_at", Float, nullable=False),
)
_audit = Table(
    "audit_events",
    _m,
    Column("chain", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("v", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("type", String(48), nullable=False),
    Column("task_id", String(64)),
    Column("root_task_id", String(64)),
    Column("parent_task_id", String(64)),
    Column("agent", String(2048)),
    Column("delegator", String(1024)),
    Column("decision_id", String(64)),
    Column("lease_id", String(64)),
    Column("trace_id", String(64)),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_task_type_ts", _audit.c.task_id, _audit.c.type, _audit.c.ts)
Index("ix_audit_root", _audit.c.root_task_id)
Index("ix_audit_ts", _audit.c.ts)
Table(
    "audit_chains",
    _m,
    Column("chain", String(64), primary_key=True),
    Column("head_seq", Integer, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("updated_at", Float, nullable=False),
)
Table(
    "audit_checkpoints",
    _m,
    Column("chain", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kid", String(128), nullable=False),
    Column("jws", Text, nullable=False),
)
_leases = Table(
    "credential_leases",
    _m,
    Column("id", String(64), primary_key=True),
    Column("task_id", String(64), nullable=False, index=True),
    Column("root_task_id", String(64), nullable=False),
    Column("agent", String(2048), nullable=False),
    Column("connector", String(32), nullable=False),
    Column("audience", String(256), nullable=False),
    Column("resource", String(256), nullable=False),
    Column("scope", String(1024), nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("revocation", String(16), nullable=False),
    Column("revoke_reason", String(32)),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float),
    Column("last_error", String(512)),
    Column("revoked_at", Float),
    Column("node_id", String(64), nullable=False),
    Column("material", Text, nullable=False),
)
Index("ix_leases_state_expires", _leases.c.state, _leases.c.expires_at)
Index("ix_leases_revocation_next", _leases.c.revocation, _leases.c.next_attempt_at)
_feed = Table(
    "revocation_feed",
    _m,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("lease_id", String(64)),
    Column("audience", String(256)),
    Column("reason", String(32), nullable=False),
    Column("expires_at", Float, nullable=False),
    # SQLite would otherwise reuse the highest rowid after a prune and move cursors back.
    sqlite_autoincrement=True,
)
Index("ix_revocation_feed_ts", _feed.c.ts)
Table(
    "credential_secrets",
    _m,
    Column("name", String(128), primary_key=True),
    Column("header", String(128), nullable=False),
    Column("value_enc", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Table(
    "gateway_tool_pins",
    _m,
    Column("server", String(128), primary_key=True),
    Column("tool", String(128), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("digest", String(80), nullable=False),
    Column("definition", Text, nullable=False),
    Column("pending_digest", String(80)),
    Column("pending_definition", Text),
    Column("first_seen", Float, nullable=False),
    Column("changed_at", Float),
    Column("approved_at", Float),
    Column("approved_by", String(256)),
)
_entries = Table(
    "workload_entries",
    _m,
    Column("id", String(64), primary_key=True),
    Column("spiffe_id", String(2048), nullable=False, index=True),
    Column("selectors", Text, nullable=False),
    Column("attributes", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
)
_jtis = Table(
    "dpop_jtis",
    _m,
    Column("key", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
)
Index("ix_dpop_jtis_expires", _jtis.c.expires_at)

#: Left by the pre-Alembic migrator on databases created before the covering index.
_LEGACY_INDEXES = {"audit_events": ["ix_audit_task_ts"]}


def upgrade() -> None:
    bind = op.get_bind()
    legacy = sa.inspect(bind).has_table("schema_migrations")
    # Fresh database: creates everything. Legacy one: only the tables it lacks.
    _m.create_all(bind, checkfirst=True)
    if not legacy:
        return
    insp = sa.inspect(bind)
    for table in _m.sorted_tables:
        have = {ix["name"] for ix in insp.get_indexes(table.name)}
        for name in _LEGACY_INDEXES.get(table.name, []):
            if name in have:
                op.drop_index(name, table_name=table.name)
        for index in table.indexes:
            if index.name not in have:
                index.create(bind)
    op.drop_table("schema_migrations")


def downgrade() -> None:
    # Down from the baseline means an empty database; dropping every table of a broker's
    # state is never what an operator wants, so it is refused.
    raise RuntimeError("the baseline revision cannot be downgraded; restore a backup instead")

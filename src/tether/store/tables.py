"""The relational schema, as SQLAlchemy Core tables on one ``MetaData``.

Times are POSIX seconds (double precision). JSON documents are stored as text so
that SQLite and PostgreSQL hold byte-identical values (the audit chain hashes them).
Modules that own more state (leases, workloads, …) add their tables to ``metadata``;
every change to a table or index also needs a revision in ``store/schema/versions``
(``make revision m="…"``; the drift test fails until it exists).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("private_enc", LargeBinary, nullable=False),  # AES-GCM under the master key
    Column("created_at", Float, nullable=False),
    Column("retires_at", Float, nullable=False),  # stops signing
    Column("expires_at", Float, nullable=False),  # stops verifying (retires_at + overlap)
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("agent", String(2048), nullable=False),
    Column("attestation", String(32), nullable=False),  # how the agent proved itself at open
    Column("agent_attrs", Text, nullable=False),  # JSON: registration/claim attributes → Cedar tags
    Column("delegator_sub", String(512)),
    Column("delegator_iss", String(512)),
    Column("intent", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("scope", Text, nullable=False),  # JSON list of {action, resource}
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("parent_id", String(64), index=True),
    Column("root_id", String(64), nullable=False, index=True),
    Column("depth", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("act_chain", Text, nullable=False),  # JSON list of SPIFFE IDs, nearest first
    Column("cnf_jkt", String(128)),
    Column("closed_at", Float),
    Column("max_sensitivity_read", Integer, nullable=False, default=-1),
)
Index("ix_tasks_agent_state", tasks.c.agent, tasks.c.state)
Index("ix_tasks_state_expires", tasks.c.state, tasks.c.expires_at)

delegations = Table(
    "delegations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("parent_task_id", String(64), nullable=False, index=True),
    Column("child_agent", String(2048), nullable=False),
    Column("scope", Text, nullable=False),
    Column("ttl_seconds", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("redeemed_task_id", String(64)),
)

approvals = Table(
    "approvals",
    metadata,
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
    approvals.c.task_id,
    approvals.c.action,
    approvals.c.resource,
    approvals.c.args_digest,
)
# The leader's expiry pass and the pending gauge read `pending` rows by expiry.
Index("ix_approvals_state_expires", approvals.c.state, approvals.c.expires_at)

resource_uses = Table(
    "resource_uses",
    metadata,
    Column("agent", String(2048), primary_key=True),
    Column("resource", String(256), primary_key=True),
    Column("first_at", Float, nullable=False),
)

# Decisions per task and second (``repo.calls_since``): what ``calls_last_minute`` sums, so
# a busy task's count is ~60 rows, not a scan of its last thousand decision events.
# Written in each decision's transaction; the leader drops seconds past ten minutes.
task_call_counts = Table(
    "task_call_counts",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("second", BigInteger, primary_key=True),
    Column("n", Integer, nullable=False),
)
# The leader's pass drops old seconds across all tasks: by second, not by task.
Index("ix_task_call_counts_second", task_call_counts.c.second)

# Drift baselines (tether.policy.drift): what the closed tasks of one (agent, intent) did.
drift_profiles = Table(
    "drift_profiles",
    metadata,
    Column("agent", String(2048), primary_key=True),
    Column("intent", String(64), primary_key=True),
    Column("tasks", Integer, nullable=False),
    Column("peak_per_minute", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
drift_pairs = Table(
    "drift_pairs",
    metadata,
    Column("agent", String(2048), primary_key=True),
    Column("intent", String(64), primary_key=True),
    Column("action", String(64), primary_key=True),
    Column("resource", String(256), primary_key=True),
    Column("tasks", Integer, nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
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
# (task, type, ts) covers the "decisions of this task in the last minute" count on every
# authorize: the count reads the index alone, never the rows.
Index("ix_audit_task_type_ts", audit_events.c.task_id, audit_events.c.type, audit_events.c.ts)
Index("ix_audit_root", audit_events.c.root_task_id)
Index("ix_audit_ts", audit_events.c.ts)

audit_chains = Table(
    "audit_chains",
    metadata,
    Column("chain", String(64), primary_key=True),
    Column("head_seq", Integer, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("updated_at", Float, nullable=False),
)

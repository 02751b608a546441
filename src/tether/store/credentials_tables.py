"""Tables of the credentials layer: leases, the revocation feed, injected secrets.

A lease row is written before the connector touches the real system and is never
deleted, so every credential Tether ever minted can be found and revoked (or shown as
irrevocable) after any crash. The revocation feed is append-only; ``seq`` is the cursor
enforcement points resume from.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, LargeBinary, String, Table, Text

from tether.store.tables import metadata

leases = Table(
    "credential_leases",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("task_id", String(64), nullable=False, index=True),
    Column("root_task_id", String(64), nullable=False),
    Column("agent", String(2048), nullable=False),
    Column("connector", String(32), nullable=False),
    Column("audience", String(256), nullable=False),  # one service id
    Column("resource", String(256), nullable=False),
    Column("scope", String(1024), nullable=False),  # `action@resource`, space separated
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    # pending → active → revoking → revoked | irrevocable   (pending → revoking on mint failure)
    Column("state", String(16), nullable=False),
    # none | pending | retrying | done | irrevocable
    Column("revocation", String(16), nullable=False),
    Column("revoke_reason", String(32)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float),
    Column("last_error", String(512)),
    Column("revoked_at", Float),
    Column("node_id", String(64), nullable=False),  # the replica that minted it
    Column("material", Text, nullable=False),  # JSON, non-secret handles (e.g. the role name)
    # The revoker working this lease (a claim token; ``next_attempt_at`` is its visibility
    # timeout). Added by schema revision 0002.
    Column("claimed_by", String(128)),
)
Index("ix_leases_state_expires", leases.c.state, leases.c.expires_at)
Index("ix_leases_revocation_next", leases.c.revocation, leases.c.next_attempt_at)

#: One row per running replica (``node_id``): a second process with a live node's id
#: refuses to start. ``instance`` tells two processes with the same id apart.
replicas = Table(
    "replica_heartbeats",
    metadata,
    Column("node_id", String(64), primary_key=True),
    Column("instance", String(64), nullable=False),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
)

revocations = Table(
    "revocation_feed",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(16), nullable=False),  # task | lease
    Column("task_id", String(64), nullable=False),
    Column("lease_id", String(64)),
    Column("audience", String(256)),
    Column("reason", String(32), nullable=False),
    Column("expires_at", Float, nullable=False),  # after this the revoked thing is dead anyway
    # SQLite would otherwise reuse the highest rowid after a prune and move cursors back.
    sqlite_autoincrement=True,
)
Index("ix_revocation_feed_ts", revocations.c.ts)

secrets = Table(
    "credential_secrets",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("header", String(128), nullable=False),
    Column("value_enc", LargeBinary, nullable=False),  # AES-GCM under the master key, AAD = name
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Legacy secrets brought under the broker (`tether secrets import`): where they came from,
# where they still appear in code, and how they rotate. Values stay in `credential_secrets`.
secret_inventory = Table(
    "secret_inventory",
    metadata,
    Column("name", String(128), primary_key=True),  # the `credential_secrets` name
    Column("service", String(256), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("exposures", Text, nullable=False),  # JSON list of {root, path, line, commit, live}
    Column("first_seen", Float),
    Column("imported_at", Float, nullable=False),
    Column("rotation", Text),  # JSON method spec (no secret in it), e.g. {"kind": "command", ...}
    Column("rotated_at", Float),
    Column("rotation_status", String(16), nullable=False),  # never | ok | failed | retire_failed
    Column("rotation_error", String(512)),
)

#: One row per cluster-wide job group: the replica that runs the periodic jobs (task
#: expiry, key rotation, the reaper's scans, the role sweep) holds it until
#: ``expires_at`` and renews it; ``epoch`` grows on every change of holder (a fencing
#: number for logs and metrics). Added by schema revision 0005.
leader_leases = Table(
    "leader_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Who was seen using an imported shared PostgreSQL login (`tether secrets pg-usage`): sampled
# from pg_stat_activity each minute, so the report covers more than the moment it is asked.
legacy_sightings = Table(
    "legacy_sightings",
    metadata,
    Column("name", String(128), primary_key=True),  # the `secret_inventory` name
    Column("database", String(128), primary_key=True),
    Column("client", String(256), primary_key=True),
    Column("application", String(256), primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("sessions_max", Integer, nullable=False),
)

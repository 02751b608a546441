"""Tables of the identity layer: workload registration entries and the DPoP replay cache.

Selectors and attributes are JSON text (sorted, canonical) so SQLite and PostgreSQL hold
identical values. The replay cache is keyed by a hash of (key thumbprint, ``jti``): every
broker process sharing the store inserts into the same table, so a proof seen by one
replica is a replay on every other.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, String, Table, Text

from tether.store.tables import metadata

workload_entries = Table(
    "workload_entries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("spiffe_id", String(2048), nullable=False, index=True),
    Column("selectors", Text, nullable=False),  # JSON list of "unix:<type>:<value>", sorted
    Column("attributes", Text, nullable=False),  # JSON object of str -> str
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
)

dpop_jtis = Table(
    "dpop_jtis",
    metadata,
    Column("key", String(64), primary_key=True),  # sha256 hex of jkt + ":" + jti
    Column("expires_at", Float, nullable=False),
)
Index("ix_dpop_jtis_expires", dpop_jtis.c.expires_at)

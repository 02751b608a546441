"""Tables owned by the audit log beyond the core events/heads: signed checkpoints.

A checkpoint is the signed statement "chain C had head hash H at seq S at time T". It is
kept here and, optionally, outside the database (``audit.checkpoint_file``/``_url``), so
a truncated or restored database is detected against a head kept elsewhere.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, String, Table, Text

from tether.store.tables import metadata

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("chain", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kid", String(128), nullable=False),
    Column("jws", Text, nullable=False),  # ES256 compact JWS over {chain, seq, hash, iat}
)

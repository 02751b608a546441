"""Tables owned by the gateways: pinned MCP tool definitions (rug-pull defence, ASI04).

One row per (server, tool). ``digest``/``definition`` are what an operator accepted
(or what was seen first: trust on first use); a different definition seen later is
kept in ``pending_*`` with ``state = 'changed'`` and blocks calls until approved.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, String, Table, Text

from tether.store.tables import metadata

tool_pins = Table(
    "gateway_tool_pins",
    metadata,
    Column("server", String(128), primary_key=True),
    Column("tool", String(128), primary_key=True),
    Column("state", String(16), nullable=False),  # approved | changed
    Column("digest", String(80), nullable=False),
    Column("definition", Text, nullable=False),  # canonical JSON of the pinned definition
    Column("pending_digest", String(80)),
    Column("pending_definition", Text),
    Column("first_seen", Float, nullable=False),
    Column("changed_at", Float),
    Column("approved_at", Float),
    Column("approved_by", String(256)),
)

"""Tables owned by the gateways: pinned MCP tool definitions (rug-pull defence, ASI04).

One row per (server, tool, definition digest), each with its own state: ``approved``
(trusted on first use or by an operator), ``pending`` (seen, waiting for review) or
``retired`` (an operator withdrew it). A state is only ever changed by an operator, never
by a gateway that happens to see another definition: several gateways serving one
server during a rolling upgrade each get the state of the definition they present.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, String, Table, Text

from tether.store.tables import metadata

tool_definitions = Table(
    "gateway_tool_definitions",
    metadata,
    Column("server", String(128), primary_key=True),
    Column("tool", String(128), primary_key=True),
    Column("digest", String(80), primary_key=True),
    Column("state", String(16), nullable=False),  # approved | pending | retired
    Column("definition", Text, nullable=False),  # canonical JSON of the definition
    Column("first_seen", Float, nullable=False),
    Column("decided_at", Float),
    Column("decided_by", String(256)),
)

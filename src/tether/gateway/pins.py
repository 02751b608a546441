"""Tool definition pinning: the rug-pull defence for MCP (OWASP ASI04, supply chain).

An MCP server can change what a tool says it does after an operator looked at it: a new
description carrying instructions for the model, a widened input schema, a flipped
``destructiveHint``. The gateway records a digest of each tool's definition the first
time it sees it (trust on first use) and, when the upstream later presents a different
definition, blocks calls to that tool and hides it from ``tools/list`` until an operator
approves the new one (``tether mcp tools approve``). Each detected change and each
approval is an audit event (``tool.definition_changed``) committed with the pin row.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.audit.event import canonical_json
from tether.errors import Conflict, InvalidRequest, NotFound
from tether.store.gateway_tables import tool_pins

#: What a definition is: every field that can change what the model reads or sends.
#: The issue names name, description, input schema and annotations; title and output
#: schema reach the model too, so a change there is a change as well.
PIN_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
APPROVED = "approved"
CHANGED = "changed"
_MAX_NAME = 128


def tool_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The pinned part of a tool (wire field names, ``None`` fields left out)."""
    return {k: tool[k] for k in PIN_FIELDS if tool.get(k) is not None}


def definition_digest(definition: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(dict(definition)).encode()).hexdigest()


def _changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _view(row: Row[Any]) -> dict[str, Any]:
    m = row._mapping
    view = {
        "server": m["server"],
        "tool": m["tool"],
        "state": m["state"],
        "digest": m["digest"],
        "pending_digest": m["pending_digest"],
        "first_seen": m["first_seen"],
        "changed_at": m["changed_at"],
        "approved_at": m["approved_at"],
        "approved_by": m["approved_by"],
    }
    if m["pending_definition"]:
        view["changed_fields"] = _changed_fields(
            json.loads(m["definition"]), json.loads(m["pending_definition"])
        )
        view["pending_definition"] = json.loads(m["pending_definition"])
    return view


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_NAME:
        raise InvalidRequest(f"`{what}` must be 1-{_MAX_NAME} characters", code="invalid_field", field=what)
    return value


class ToolPins:
    """Pins in the broker's store; every change commits with its audit event."""

    def __init__(self, audit: AuditChain, clock: Callable[[], float] = time.time) -> None:
        self.audit = audit
        self.clock = clock

    def observe(self, server: str, definitions: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Compare what an upstream presents with the pins: ``{tool: "approved" | "changed"}``."""
        _check_name(server, "server")
        now = self.clock()
        states: dict[str, str] = {}
        with self.audit.unit() as u:
            for name, raw in definitions.items():
                _check_name(name, "tool")
                definition = tool_definition(raw)
                states[name] = self._observe_one(u.conn, u.emit, server, name, definition, now)
        return states

    def _observe_one(
        self,
        conn: Connection,
        emit: Callable[..., Any],
        server: str,
        name: str,
        definition: dict[str, Any],
        now: float,
    ) -> str:
        digest = definition_digest(definition)
        key = (tool_pins.c.server == server) & (tool_pins.c.tool == name)
        row = conn.execute(select(tool_pins).where(key)).first()
        if row is None:
            conn.execute(
                insert(tool_pins).values(
                    server=server,
                    tool=name,
                    state=APPROVED,
                    digest=digest,
                    definition=canonical_json(definition),
                    first_seen=now,
                )
            )
            return APPROVED
        m = row._mapping
        if m["digest"] == digest:
            if m["state"] != APPROVED:  # the upstream went back to what was approved
                conn.execute(
                    update(tool_pins)
                    .where(key)
                    .values(state=APPROVED, pending_digest=None, pending_definition=None)
                )
            return APPROVED
        if m["state"] == CHANGED and m["pending_digest"] == digest:
            return CHANGED  # already recorded and audited; still blocked
        conn.execute(
            update(tool_pins)
            .where(key)
            .values(
                state=CHANGED,
                pending_digest=digest,
                pending_definition=canonical_json(definition),
                changed_at=now,
            )
        )
        emit(
            ev.TOOL_DEFINITION_CHANGED,
            {
                "server": server,
                "tool": name,
                "change": "detected",
                "approved_digest": m["digest"],
                "new_digest": digest,
                "fields": _changed_fields(json.loads(m["definition"]), definition),
            },
        )
        return CHANGED

    def list(self, server: str | None = None) -> list[dict[str, Any]]:
        q = select(tool_pins).order_by(tool_pins.c.server, tool_pins.c.tool)
        if server:
            q = q.where(tool_pins.c.server == server)
        with self.audit.db.read() as conn:
            return [_view(r) for r in conn.execute(q)]

    def approve(self, server: str, tool: str, *, by: str, digest: str | None = None) -> dict[str, Any]:
        """Accept a changed definition. ``digest`` pins the approval to what was reviewed."""
        key = (tool_pins.c.server == _check_name(server, "server")) & (
            tool_pins.c.tool == _check_name(tool, "tool")
        )
        with self.audit.unit() as u:
            row = u.conn.execute(select(tool_pins).where(key)).first()
            if row is None:
                raise NotFound(f"no pinned tool `{tool}` on server `{server}`", code="tool_not_found")
            m = row._mapping
            if m["state"] != CHANGED:
                raise Conflict(
                    f"`{server}.{tool}` has no changed definition to approve", code="tool_not_changed"
                )
            if digest is not None and digest != m["pending_digest"]:
                # The upstream changed again after the operator reviewed it: review again.
                raise Conflict(
                    "the pending definition is not the one you reviewed; list it again",
                    code="tool_digest_mismatch",
                    pending_digest=m["pending_digest"],
                )
            u.conn.execute(
                update(tool_pins)
                .where(key)
                .values(
                    state=APPROVED,
                    digest=m["pending_digest"],
                    definition=m["pending_definition"],
                    pending_digest=None,
                    pending_definition=None,
                    approved_at=self.clock(),
                    approved_by=by,
                )
            )
            u.emit(
                ev.TOOL_DEFINITION_CHANGED,
                {
                    "server": server,
                    "tool": tool,
                    "change": "approved",
                    "by": by,
                    "previous_digest": m["digest"],
                    "approved_digest": m["pending_digest"],
                },
            )
            new = u.conn.execute(select(tool_pins).where(key)).one()
        return _view(new)

"""Tool definition pinning: the rug-pull defence for MCP (OWASP ASI04, supply chain).

An MCP server can change what a tool says it does after an operator looked at it: a new
description carrying instructions for the model, a widened input schema, a flipped
``destructiveHint``. The gateway records a digest of each tool's definition the first
time it sees the tool (trust on first use) and, when an upstream later presents a
different definition, blocks calls to that tool and hides it from ``tools/list`` until
an operator approves the new one (``tether mcp tools approve``). State is kept per
(server, tool, digest): approving a new definition leaves the previous one approved
until it is retired (``tether mcp tools retire``), so gateways still serving it keep
working, and no gateway can reset what another one detected. Each detection, approval
and retirement is an audit event (``tool.definition_changed``) committed with its row.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.audit.event import canonical_json
from tether.errors import Conflict, InvalidRequest, NotFound
from tether.store.gateway_tables import tool_definitions

#: What a definition is: every field that can change what the model reads or sends.
#: The issue names name, description, input schema and annotations; title and output
#: schema reach the model too, so a change there is a change as well.
PIN_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
APPROVED = "approved"
CHANGED = "changed"  # what a gateway is told for a pending or retired definition: blocked
PENDING = "pending"
RETIRED = "retired"
_MAX_NAME = 128


def tool_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The pinned part of a tool (wire field names, ``None`` fields left out)."""
    return {k: tool[k] for k in PIN_FIELDS if tool.get(k) is not None}


def definition_digest(definition: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(dict(definition)).encode()).hexdigest()


def _changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _view(row: Row[Any], approved: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One definition as operators see it; a pending one says what changed against the
    latest approved definition of the same tool."""
    m = row._mapping
    view = {
        "server": m["server"],
        "tool": m["tool"],
        "digest": m["digest"],
        "state": m["state"],
        "first_seen": m["first_seen"],
        "decided_at": m["decided_at"],
        "decided_by": m["decided_by"],
    }
    if m["state"] == PENDING:
        definition = json.loads(m["definition"])
        view["definition"] = definition
        view["changed_fields"] = _changed_fields(approved or {}, definition)
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
        """Compare what an upstream presents with the pins: ``{tool: "approved" | "changed"}``.

        Seeing a definition never changes the state of another one: only operators do."""
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
        t = tool_definitions
        tool_key = (t.c.server == server) & (t.c.tool == name)
        row = conn.execute(select(t.c.state).where(tool_key & (t.c.digest == digest))).first()
        if row is not None:
            return APPROVED if row.state == APPROVED else CHANGED
        known = conn.execute(select(t.c.digest).where(tool_key).limit(1)).first()
        state = PENDING if known is not None else APPROVED  # trust on first use only
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(t).values(
                        server=server,
                        tool=name,
                        digest=digest,
                        state=state,
                        definition=canonical_json(definition),
                        first_seen=now,
                    )
                )
        except IntegrityError:  # another gateway recorded it first: its state stands
            row = conn.execute(select(t.c.state).where(tool_key & (t.c.digest == digest))).one()
            return APPROVED if row.state == APPROVED else CHANGED
        if state == PENDING:
            approved = self._latest_approved(conn, server, name)
            emit(
                ev.TOOL_DEFINITION_CHANGED,
                {
                    "server": server,
                    "tool": name,
                    "change": "detected",
                    "approved_digest": approved[0] if approved else None,
                    "new_digest": digest,
                    "fields": _changed_fields(approved[1] if approved else {}, definition),
                },
            )
            return CHANGED
        return APPROVED

    @staticmethod
    def _latest_approved(conn: Connection, server: str, tool: str) -> tuple[str, dict[str, Any]] | None:
        t = tool_definitions
        row = conn.execute(
            select(t.c.digest, t.c.definition)
            .where((t.c.server == server) & (t.c.tool == tool) & (t.c.state == APPROVED))
            .order_by(t.c.decided_at.desc().nulls_last(), t.c.first_seen.desc())
            .limit(1)
        ).first()
        return (row.digest, json.loads(row.definition)) if row else None

    def list(self, server: str | None = None) -> list[dict[str, Any]]:
        t = tool_definitions
        q = select(t).order_by(t.c.server, t.c.tool, t.c.first_seen)
        if server:
            q = q.where(t.c.server == server)
        with self.audit.db.read() as conn:
            rows = list(conn.execute(q))
            out = []
            for r in rows:
                approved = self._latest_approved(conn, r.server, r.tool) if r.state == PENDING else None
                out.append(_view(r, approved[1] if approved else None))
        return out

    def approve(self, server: str, tool: str, *, by: str, digest: str | None = None) -> dict[str, Any]:
        """Accept a pending definition (``digest``: the one reviewed). Other approved
        definitions of the tool stay approved until retired: a rolling upgrade keeps working."""
        return self._decide(server, tool, digest, by, APPROVED)

    def retire(self, server: str, tool: str, *, by: str, digest: str) -> dict[str, Any]:
        """Withdraw a definition: gateways presenting it block its calls from then on."""
        return self._decide(server, tool, digest, by, RETIRED)

    def _decide(self, server: str, tool: str, digest: str | None, by: str, new: str) -> dict[str, Any]:
        t = tool_definitions
        tool_key = (t.c.server == _check_name(server, "server")) & (t.c.tool == _check_name(tool, "tool"))
        with self.audit.unit() as u:
            rows = list(u.conn.execute(select(t).where(tool_key)))
            if not rows:
                raise NotFound(f"no pinned tool `{tool}` on server `{server}`", code="tool_not_found")
            if new == APPROVED:
                pending = [r for r in rows if r.state == PENDING]
                if not pending:
                    raise Conflict(
                        f"`{server}.{tool}` has no changed definition to approve", code="tool_not_changed"
                    )
                if digest is None and len(pending) > 1:
                    raise Conflict(
                        "several definitions are pending; name the one you reviewed with `--digest`",
                        code="tool_digest_required",
                    )
                row = pending[0] if digest is None else next((r for r in pending if r.digest == digest), None)
            else:
                row = next((r for r in rows if r.digest == digest and r.state != RETIRED), None)
            if row is None:
                # The upstream changed again after the operator reviewed it: review again.
                raise Conflict(
                    "the definition is not the one you reviewed; list it again",
                    code="tool_digest_mismatch",
                    pending=[r.digest for r in rows if r.state == PENDING],
                )
            key = tool_key & (t.c.digest == row.digest)
            u.conn.execute(update(t).where(key).values(state=new, decided_at=self.clock(), decided_by=by))
            u.emit(
                ev.TOOL_DEFINITION_CHANGED,
                {
                    "server": server,
                    "tool": tool,
                    "change": "approved" if new == APPROVED else "retired",
                    "by": by,
                    "digest": row.digest,
                    "approved_digest": row.digest if new == APPROVED else None,
                    "still_approved": [
                        r.digest for r in rows if r.state == APPROVED and r.digest != row.digest
                    ],
                },
            )
            return _view(u.conn.execute(select(t).where(key)).one())

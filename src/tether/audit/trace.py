"""The chain of autonomy of one task tree: delegator → agent → sub-agents, with what each did.

``build_trace`` reads every event of the tree of a task's root (one indexed query on
``root_task_id``), from every chain, in time order, and hangs each under its task:
decisions, approvals, credentials, forwarded calls, delegations and the task's end.
Each event's own hash is re-checked on the way (cheap), so a trace shows tampered rows;
whether rows are *missing* is ``verify``'s job.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.text import Text
from rich.tree import Tree
from sqlalchemy import Connection, select

from tether.audit import event as ev
from tether.audit.event import Event, row_hash
from tether.errors import NotFound
from tether.store import tables as t

_E = t.audit_events.c
_ENDS = {ev.TASK_CLOSED: "closed", ev.TASK_EXPIRED: "expired", ev.TASK_REVOKED: "revoked"}


@dataclass
class TraceItem:
    event: Event
    summary: str
    intact: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.event.ts,
            "type": self.event.type,
            "summary": self.summary,
            "intact": self.intact,
            "chain": self.event.chain,
            "seq": self.event.seq,
            "decision_id": self.event.decision_id,
            "lease_id": self.event.lease_id,
            "trace_id": self.event.trace_id,
            "payload": self.event.payload,
        }


@dataclass
class TraceTask:
    task_id: str
    agent: str | None = None
    delegator: str | None = None
    intent: str | None = None
    parent_task_id: str | None = None
    depth: int | None = None
    opened_at: float | None = None
    state: str = "active"
    ended_at: float | None = None
    items: list[TraceItem] = field(default_factory=list)
    children: list[TraceTask] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "agent": self.agent,
            "delegator": self.delegator,
            "intent": self.intent,
            "parent_task_id": self.parent_task_id,
            "depth": self.depth,
            "opened_at": self.opened_at,
            "state": self.state,
            "ended_at": self.ended_at,
            "events": [i.to_dict() for i in self.items],
            "children": [c.to_dict() for c in self.children],
        }


@dataclass
class Trace:
    root: TraceTask
    events: int
    tampered: list[tuple[str, int]]  # (chain, seq) of events whose hash does not match

    @property
    def delegator(self) -> str | None:
        return self.root.delegator

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_task_id": self.root.task_id,
            "delegator": self.delegator,
            "events": self.events,
            "tampered": [{"chain": c, "seq": s} for c, s in self.tampered],
            "root": self.root.to_dict(),
        }


def summarize(e: Event) -> str:
    """One line saying what the event is about (for people; tools read the payload)."""
    p = e.payload
    if e.type == ev.DECISION:
        extra = [f"code={p['code']}"] if p.get("code") and p.get("outcome") != "allow" else []
        for k in ("approval_id", "approval_used"):
            if p.get(k):
                extra.append(f"{k}={p[k]}")
        if e.lease_id:
            extra.append(f"lease={e.lease_id}")
        return " ".join(
            [
                f"decision {p.get('outcome', '?')}",
                str(p.get("action", "?")),
                str(p.get("resource", "")),
                *extra,
            ]
        ).strip()
    if e.type.startswith("approval."):
        verb = e.type.split(".", 1)[1]
        by = f" by {p['by']}" if p.get("by") else ""
        return f"approval {verb} {p.get('action', '')} {p.get('resource', '')} ({p.get('approval_id')}){by}"
    if e.type.startswith("credential."):
        verb = e.type.split(".", 1)[1]
        what = " ".join(str(p[k]) for k in ("kind", "audience") if p.get(k))
        return f"credential {verb} {what} (lease {e.lease_id or p.get('lease_id')})".replace("  ", " ")
    if e.type in (ev.CALL_FORWARDED, ev.CALL_RESULT):
        target = " ".join(str(p[k]) for k in ("method", "target", "tool", "path") if p.get(k))
        status = f" → {p['status']}" if p.get("status") is not None else ""
        return f"call {'forwarded' if e.type == ev.CALL_FORWARDED else 'result'} {target}{status}".strip()
    if e.type == ev.TASK_DELEGATED:
        return f"delegated to {p.get('child_agent')} ({p.get('delegation_id')})"
    if e.type in _ENDS:
        cause = p.get("cause_task_id")
        why = f", cascade from {cause}" if cause and cause != e.task_id else ""
        return f"task {_ENDS[e.type]} by {p.get('by')}{why}"
    if e.type == ev.TASK_OPENED:
        return f"task opened intent={p.get('intent')}"
    return e.type


_COLUMNS = (
    "chain, seq, ts, type, prev_hash, payload, task_id, root_task_id, parent_task_id, agent, "
    "delegator, decision_id, lease_id, trace_id, v, hash"
)


def _row_intact(m: Any) -> bool:
    return bool(
        row_hash(
            chain=m[0],
            seq=m[1],
            ts=m[2],
            type=m[3],
            prev_hash=m[4],
            payload_text=m[5],
            task_id=m[6],
            root_task_id=m[7],
            parent_task_id=m[8],
            agent=m[9],
            delegator=m[10],
            decision_id=m[11],
            lease_id=m[12],
            trace_id=m[13],
            v=m[14],
        )
        == m[15]
    )


def _payload(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # what orjson refuses (e.g. > 64-bit ints), json may read
        return json.loads(text)


def _tree_rows(conn: Connection, root_id: str) -> Iterator[tuple[Event, bool]]:
    """Every event of the tree in time order, each with "its hash matches its content".

    On SQLite the rows come straight from the driver with the canonical body assembled by
    the database (as in ``verify``'s fast pass); a row it cannot vouch for is re-checked
    with ``row_hash``, which has the last word.
    """
    from tether.audit.rangescan import SQL_BODY_AFTER_TS, SQL_BODY_BEFORE_TS
    from tether.audit.verify import fast_intact

    raw = conn.connection.driver_connection if conn.dialect.name == "sqlite" else None
    rows: Iterable[Any]
    if isinstance(raw, sqlite3.Connection):
        conn.exec_driver_sql("SELECT 1")  # inside this connection's read transaction
        # Constant SQL (columns and the verify pieces); the root id is bound.
        sql = f"SELECT {_COLUMNS}, {SQL_BODY_BEFORE_TS}, {SQL_BODY_AFTER_TS} FROM audit_events"  # noqa: S608
        rows = raw.execute(sql + " WHERE root_task_id = ?", (root_id,)).fetchall()
    else:
        rows = conn.exec_driver_sql(
            f"SELECT {_COLUMNS}, NULL, NULL FROM audit_events WHERE root_task_id = %(r)s",  # noqa: S608
            {"r": root_id},
        ).all()
    # Sorted here rather than by the database: its sorter would carry every wide row.
    for r in sorted(rows, key=lambda r: (r[2], r[0], r[1])):
        event = Event(
            chain=r[0],
            seq=r[1],
            ts=r[2],
            type=r[3],
            prev_hash=r[4],
            payload=_payload(r[5]),
            task_id=r[6],
            root_task_id=r[7],
            parent_task_id=r[8],
            agent=r[9],
            delegator=r[10],
            decision_id=r[11],
            lease_id=r[12],
            trace_id=r[13],
            v=r[14],
            hash=r[15],
        )
        yield event, fast_intact(r[16], r[2], r[17], r[15]) or _row_intact(r)


def build_trace(conn: Connection, task_id: str) -> Trace:
    root_id = conn.execute(
        select(_E.root_task_id).where(_E.task_id == task_id, _E.root_task_id.is_not(None)).limit(1)
    ).scalar()
    if root_id is None:
        raise NotFound(f"no audit events for task `{task_id}`", code="task_not_found")
    # Only the indexed column: the broker sets root_task_id on every event of a tree (a root
    # task's own events carry its id), and an OR with task_id would defeat the index.
    return assemble(root_id, _tree_rows(conn, root_id))


def assemble(root_id: str, events: Iterable[tuple[Event, bool]]) -> Trace:
    """Hang time-ordered events under their tasks; tasks under their parents."""
    tasks: dict[str, TraceTask] = {}

    def node(tid: str) -> TraceTask:
        return tasks.setdefault(tid, TraceTask(tid))

    count = 0
    tampered: list[tuple[str, int]] = []
    for e, intact in events:
        count += 1
        if not intact:
            tampered.append((e.chain, e.seq))
        # An event without a task (a refused redemption) belongs to the parent it targeted.
        tid = e.task_id or e.parent_task_id or root_id
        n = node(tid)
        if e.type == ev.TASK_OPENED and e.task_id:
            n.agent, n.delegator, n.parent_task_id = e.agent, e.delegator, e.parent_task_id
            n.intent, n.opened_at = e.payload.get("intent"), e.ts
            depth = e.payload.get("depth")
            n.depth = depth if isinstance(depth, int) else None
        elif e.type in _ENDS and e.task_id:
            n.state, n.ended_at = _ENDS[e.type], e.ts
        n.agent = n.agent or (e.agent if e.task_id else None)
        n.items.append(TraceItem(e, summarize(e), intact))
    root = node(root_id)
    for tid, n in tasks.items():
        if tid == root_id:
            continue
        parent = tasks.get(n.parent_task_id or "") or root
        parent.children.append(n)
    for n in tasks.values():
        n.children.sort(key=lambda c: (c.opened_at or 0.0, c.task_id))
    return Trace(root, count, tampered)


# -- rendering ---------------------------------------------------------------------------------
_STYLE = {"allow": "green", "deny": "red", "approval_required": "yellow"}


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


def _item_text(i: TraceItem) -> Text:
    style = _STYLE.get(str(i.event.payload.get("outcome")), "") if i.event.type == ev.DECISION else ""
    if i.event.type.startswith(("credential.", "call.")):
        style = "cyan"
    if i.event.type.startswith("approval."):
        style = "magenta"
    text = Text(f"{_clock(i.event.ts)}  ", style="dim")
    text.append(i.summary, style=style)
    text.append(f"  #{i.event.chain}:{i.event.seq}", style="dim")
    if not i.intact:
        text.append("  TAMPERED", style="bold red reverse")
    return text


def _task_label(n: TraceTask) -> Text:
    text = Text("agent ", style="dim")
    text.append(n.agent or "?", style="bold")
    text.append(f"  task {n.task_id}", style="dim")
    if n.intent:
        text.append(f"  intent {n.intent}")
    state_style = {"active": "green", "closed": "dim", "expired": "yellow", "revoked": "red"}.get(n.state, "")
    text.append(f"  [{n.state}]", style=state_style)
    return text


def _add_task(tree: Tree, n: TraceTask) -> None:
    branch = tree.add(_task_label(n))
    timeline: list[tuple[float, int, TraceItem | TraceTask]] = [
        (i.event.ts, 0, i) for i in n.items if i.event.type != ev.TASK_OPENED
    ]
    timeline += [(c.opened_at or 0.0, 1, c) for c in n.children]
    for _, _, x in sorted(timeline, key=lambda x: (x[0], x[1])):
        if isinstance(x, TraceTask):
            _add_task(branch, x)
        else:
            branch.add(_item_text(x))


def render_tree(trace: Trace) -> Tree:
    """A Rich tree: delegator → agent → sub-agents, each task's events in time order,
    sub-agents placed at the moment they were opened."""
    label = Text("delegator ", style="dim")
    label.append(trace.delegator or "(none: the agent acted on its own)", style="bold")
    tree = Tree(label)
    _add_task(tree, trace.root)
    return tree

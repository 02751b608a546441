"""The chain of autonomy of one task tree: delegator → agent → sub-agents, with what each did.

``build_trace`` reads every event of the tree of a task's root (one indexed query on
``root_task_id``), from every chain, in time order, and hangs each under its task:
decisions, approvals, credentials, forwarded calls, delegations and the task's end.
Each event's own hash is re-checked on the way (cheap), so a trace shows tampered rows;
whether rows are *missing* is ``verify``'s job.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import operator
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
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


Row = tuple[Any, ...]  # the columns of ``_COLUMNS``, in Event's field order (chain … hash)


class TraceItem:
    """One event under its task: what a trace shows of it (fields, parsed payload, one-line
    summary, whether its hash matches). ``event`` is built on first use: showing a large tree
    needs only the fields below, and an ``Event`` per row cost a quarter of a trace."""

    __slots__ = ("_event", "_row", "intact", "payload", "summary")

    def __init__(self, event: Event, summary: str, intact: bool) -> None:
        self._event: Event | None = event
        self._row: Row = (
            event.chain,
            event.seq,
            event.ts,
            event.type,
            event.prev_hash,
            None,
            event.task_id,
            event.root_task_id,
            event.parent_task_id,
            event.agent,
            event.delegator,
            event.decision_id,
            event.lease_id,
            event.trace_id,
            event.v,
            event.hash,
        )
        self.payload: dict[str, Any] = event.payload
        self.summary = summary
        self.intact = intact

    @classmethod
    def of_row(cls, row: Row, payload: dict[str, Any], intact: bool) -> TraceItem:
        item = cls.__new__(cls)
        item._event, item._row, item.payload, item.intact = None, row, payload, intact
        item.summary = _summary(row[3], payload, row[6], row[12])
        return item

    @property
    def event(self) -> Event:
        if self._event is None:
            r = self._row
            self._event = Event(
                r[0], r[1], r[2], r[3], r[4], self.payload, r[6], r[7], r[8], r[9], r[10], r[11], r[12],
                r[13], r[14], r[15],
            )  # fmt: skip
        return self._event

    @property
    def chain(self) -> str:
        return str(self._row[0])

    @property
    def seq(self) -> int:
        return int(self._row[1])

    @property
    def ts(self) -> float:
        return float(self._row[2])

    @property
    def type(self) -> str:
        return str(self._row[3])

    def to_dict(self) -> dict[str, Any]:
        r = self._row
        return {
            "ts": r[2],
            "type": r[3],
            "summary": self.summary,
            "intact": self.intact,
            "chain": r[0],
            "seq": r[1],
            "decision_id": r[11],
            "lease_id": r[12],
            "trace_id": r[13],
            "payload": self.payload,
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
    return _summary(e.type, e.payload, e.task_id, e.lease_id)


def _summary(type_: str, p: dict[str, Any], task_id: str | None, lease_id: str | None) -> str:
    if type_ == ev.DECISION:
        extra = [f"code={p['code']}"] if p.get("code") and p.get("outcome") != "allow" else []
        for k in ("approval_id", "approval_used"):
            if p.get(k):
                extra.append(f"{k}={p[k]}")
        if lease_id:
            extra.append(f"lease={lease_id}")
        return " ".join(
            [
                f"decision {p.get('outcome', '?')}",
                str(p.get("action", "?")),
                str(p.get("resource", "")),
                *extra,
            ]
        ).strip()
    if type_.startswith("approval."):
        verb = type_.split(".", 1)[1]
        by = f" by {p['by']}" if p.get("by") else ""
        return f"approval {verb} {p.get('action', '')} {p.get('resource', '')} ({p.get('approval_id')}){by}"
    if type_.startswith("credential."):
        verb = type_.split(".", 1)[1]
        what = " ".join(str(p[k]) for k in ("kind", "audience") if p.get(k))
        return f"credential {verb} {what} (lease {lease_id or p.get('lease_id')})".replace("  ", " ")
    if type_ in (ev.CALL_FORWARDED, ev.CALL_RESULT):
        target = " ".join(str(p[k]) for k in ("method", "target", "tool", "path") if p.get(k))
        status = f" → {p['status']}" if p.get("status") is not None else ""
        return f"call {'forwarded' if type_ == ev.CALL_FORWARDED else 'result'} {target}{status}".strip()
    if type_ == ev.TASK_DELEGATED:
        return f"delegated to {p.get('child_agent')} ({p.get('delegation_id')})"
    if type_ in _ENDS:
        cause = p.get("cause_task_id")
        why = f", cascade from {cause}" if cause and cause != task_id else ""
        return f"task {_ENDS[type_]} by {p.get('by')}{why}"
    if type_ == ev.TASK_OPENED:
        return f"task opened intent={p.get('intent')}"
    return type_


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


#: Rows per ``fetchmany``: each batch is hashed and parsed while it is still in the CPU's
#: cache (a whole tree fetched first and then walked in time order was read from memory).
_CHUNK = 256


def _tree_rows(conn: Connection, root_id: str) -> Iterator[Sequence[Any]]:
    """Every row of the tree (its columns), in batches as read."""
    raw = conn.connection.driver_connection if conn.dialect.name == "sqlite" else None
    if isinstance(raw, sqlite3.Connection):
        conn.exec_driver_sql("SELECT 1")  # inside this connection's read transaction
        # Constant SQL (the columns); the root id is bound.
        cur = raw.execute(f"SELECT {_COLUMNS} FROM audit_events WHERE root_task_id = ?", (root_id,))  # noqa: S608
        try:
            while rows := cur.fetchmany(_CHUNK):
                yield rows
        finally:
            cur.close()
        return
    yield from conn.exec_driver_sql(
        f"SELECT {_COLUMNS} FROM audit_events WHERE root_task_id = %(r)s",  # noqa: S608
        {"r": root_id},
    ).partitions(_CHUNK)


_sha256, _repr, _quote = hashlib.sha256, float.__repr__, encode_basestring


def _intact(r: Row) -> bool:
    """Whether the row hashes to its stored hash: ``row_hash``'s body, spelled here for the
    shapes the writer writes (text or NULL columns, integer seq and v, a float ts whose
    repr is its canonical spelling), from the columns already read; anything else is left
    to ``row_hash`` itself. Building the body in Python costs less than having the database
    assemble it beside the columns (one more wide value per row)."""
    chain, seq, ts, type_, prev, text, task, root, parent, agent, dlg, dec, lease, trc, v, h = r
    if type(seq) is int and type(v) is int and type(ts) is float:
        t = _repr(ts)
        # v >= 2 spells ts as RFC 8785 does: repr's text unless integral or in exponent form.
        if v < 2 or ("e" not in t and t[-1].isdigit() and not t.endswith(".0")):
            try:
                body = (
                    f'{{"agent":{"null" if agent is None else _quote(agent)},"chain":{_quote(chain)},'
                    f'"decision_id":{"null" if dec is None else _quote(dec)},'
                    f'"delegator":{"null" if dlg is None else _quote(dlg)},'
                    f'"lease_id":{"null" if lease is None else _quote(lease)},'
                    f'"parent_task_id":{"null" if parent is None else _quote(parent)},"payload":{text},'
                    f'"prev_hash":{_quote(prev)},"root_task_id":{"null" if root is None else _quote(root)},'
                    f'"seq":{seq},"task_id":{"null" if task is None else _quote(task)},'
                    f'"trace_id":{"null" if trc is None else _quote(trc)},"ts":{t},"type":{_quote(type_)},'
                    f'"v":{v}}}'
                )
                return bool(_sha256(body.encode()).hexdigest() == h)
            except (TypeError, ValueError):  # a column of another type, a lone surrogate
                pass
    return _row_intact(r)


def _items(batches: Iterable[Sequence[Row]]) -> list[TraceItem]:
    """Each row as a trace item, in time order, with "its hash matches its content"."""
    keyed: list[tuple[float, str, int, TraceItem]] = []
    add = keyed.append
    for rows in batches:
        for r in rows:
            add((r[2], r[0], r[1], TraceItem.of_row(r, _payload(r[5]), _intact(r))))
    # Sorted here rather than by the database: its sorter would carry every wide row. The
    # sort is stable and (chain, seq) is the key, so the item itself is never compared.
    keyed.sort(key=_ORDER)
    return [k[3] for k in keyed]


_ORDER = operator.itemgetter(0, 1, 2)  # ts, chain, seq


def build_trace(conn: Connection, task_id: str) -> Trace:
    root_id = conn.execute(
        select(_E.root_task_id).where(_E.task_id == task_id, _E.root_task_id.is_not(None)).limit(1)
    ).scalar()
    if root_id is None:
        raise NotFound(f"no audit events for task `{task_id}`", code="task_not_found")
    # Only the indexed column: the broker sets root_task_id on every event of a tree (a root
    # task's own events carry its id), and an OR with task_id would defeat the index.
    with _no_gc():
        return _hang(root_id, _items(_tree_rows(conn, root_id)))


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The collector paused while a trace is built: it allocates ~10 containers per event
    and no cycles, and the passes over them cost a tenth to a fifth of a large trace.

    On the way out the objects made meanwhile are handed to the oldest generation (freeze,
    then unfreeze) rather than left young: the first collection after ``enable`` would
    otherwise walk every one of them at once, for nothing (they are freed by their
    reference counts), at about a tenth of the trace's time. Not in a process whose heap is
    already frozen (``tether serve`` freezes its start-up heap): unfreeze would thaw it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def assemble(root_id: str, events: Iterable[tuple[Event, bool]]) -> Trace:
    """Hang time-ordered events under their tasks; tasks under their parents."""
    return _hang(root_id, (TraceItem(e, summarize(e), intact) for e, intact in events))


def _hang(root_id: str, items: Iterable[TraceItem]) -> Trace:
    """``assemble`` for trace items, in one pass over them."""
    tasks: dict[str, TraceTask] = {}
    count = 0
    tampered: list[tuple[str, int]] = []
    opened, ends = ev.TASK_OPENED, _ENDS
    for item in items:
        count += 1
        # chain, seq, ts, type, …, task_id (6), parent_task_id (8), agent (9), delegator (10)
        r = item._row
        if not item.intact:
            tampered.append((r[0], r[1]))
        task_id = r[6]
        # An event without a task (a refused redemption) belongs to the parent it targeted.
        tid = task_id or r[8] or root_id
        n = tasks.get(tid)
        if n is None:
            n = tasks[tid] = TraceTask(tid)
        if task_id:
            type_ = r[3]
            if type_ == opened:
                p = item.payload
                n.agent, n.delegator, n.parent_task_id = r[9], r[10], r[8]
                n.intent, n.opened_at = p.get("intent"), r[2]
                depth = p.get("depth")
                n.depth = depth if isinstance(depth, int) else None
            elif type_ in ends:
                n.state, n.ended_at = ends[type_], r[2]
            if not n.agent:
                n.agent = r[9]
        elif not n.agent:
            n.agent = None
        n.items.append(item)
    root = tasks.get(root_id)
    if root is None:
        root = tasks[root_id] = TraceTask(root_id)
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
    style = _STYLE.get(str(i.payload.get("outcome")), "") if i.type == ev.DECISION else ""
    if i.type.startswith(("credential.", "call.")):
        style = "cyan"
    if i.type.startswith("approval."):
        style = "magenta"
    text = Text(f"{_clock(i.ts)}  ", style="dim")
    text.append(i.summary, style=style)
    text.append(f"  #{i.chain}:{i.seq}", style="dim")
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
        (i.ts, 0, i) for i in n.items if i.type != ev.TASK_OPENED
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

"""One hash chain per writer, appended in the same transaction as the state it records.

``AuditChain.unit()`` opens a store transaction and takes this writer's chain lock; the
caller changes state and ``emit``s events on the same connection; on commit the chain
head advances. If anything fails the transaction rolls back, the head stays, and the
error propagates so the action is denied ("no action without a record").

Two processes writing the same chain (a misconfigured ``node_id``) collide on the
``(chain, seq)`` key or the head compare-and-set and fail closed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from tether.audit.event import (
    EVENT_FIELDS,
    EVENT_TYPES,
    GENESIS_HASH,
    SCHEMA_VERSION,
    Event,
    jcs,
    jcs_fast,
    row_hash,
)
from tether.errors import TetherError, Unavailable
from tether.store import raw
from tether.store import tables as t
from tether.store.db import Database

_INSERT_EVENT_RAW = raw.statement(
    "INSERT INTO audit_events (chain, seq, v, ts, type, task_id, root_task_id, parent_task_id, agent, "
    "delegator, decision_id, lease_id, trace_id, payload, prev_hash, hash) VALUES (:chain, :seq, :v, :ts, "
    ":type, :task_id, :root_task_id, :parent_task_id, :agent, :delegator, :decision_id, :lease_id, "
    ":trace_id, :payload, :prev_hash, :hash)"
)
# Compare-and-set on the head: a second writer on this chain makes it match no row.
_ADVANCE_HEAD_RAW = raw.statement(
    "UPDATE audit_chains SET head_seq = :seq, head_hash = :h, updated_at = :at "
    "WHERE chain = :c AND head_seq = :old"
)

#: ``(event type, payload) -> payload``. A filter may also have ``untouched(text) -> bool``:
#: true only if it would change nothing in the payload whose canonical, escape-free text is
#: ``text``; a filter without it always runs.
PayloadFilter = Callable[[str, dict[str, Any]], dict[str, Any]]


def _untouched(f: PayloadFilter, text: str) -> bool:
    check = getattr(f, "untouched", None)
    return check is not None and bool(check(text))


Listener = Callable[[Event], None]

# Listeners of every chain in the process: only ``capture_events`` (tests) uses these.
# A runtime's own components listen on their chain (``AuditChain.add_listener``), so two
# runtimes in one process never hear each other.
_listeners: list[Listener] = []
_listeners_lock = threading.Lock()


@contextlib.contextmanager
def capture_events() -> Iterator[list[Event]]:
    """Collect every audit event committed inside the block (any chain, any thread).

    For tests, in the spirit of ``structlog.testing.capture_logs``::

        with capture_events() as events:
            broker.authorize(...)
        assert [e.type for e in events] == ["decision"]
    """
    captured: list[Event] = []
    with _listeners_lock:
        _listeners.append(captured.append)
    try:
        yield captured
    finally:
        with _listeners_lock:
            _listeners.remove(captured.append)


@dataclass
class Unit:
    """One transaction: a connection plus the events to commit with it."""

    conn: Connection
    _chain: AuditChain
    _seq: int
    _head: str
    events: list[Event] = field(default_factory=list)

    def emit(self, type_: str, payload: dict[str, Any] | None = None, **fields: Any) -> Event:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type `{type_}`")
        unknown = set(fields) - set(EVENT_FIELDS)
        if unknown:
            raise ValueError(f"unknown audit field `{sorted(unknown)[0]}`")
        body = dict(payload or {})
        filters = self._chain.filters
        # Most payloads hold nothing to mask and only plain JSON: their canonical text comes
        # from orjson and the filters look at that text once. Any doubt takes the full way.
        payload_json = jcs_fast(body)
        if payload_json is None or not all(_untouched(f, payload_json) for f in filters):
            for f in filters:
                body = f(type_, body)
            payload_json = jcs(body)  # RFC 8785 (schema v2); also rejects NaN/unserializable payloads
        self._seq += 1
        row: dict[str, Any] = {
            "chain": self._chain.chain_id,
            "seq": self._seq,
            "v": SCHEMA_VERSION,
            "ts": time.time(),
            "type": type_,
            "task_id": fields.get("task_id"),
            "root_task_id": fields.get("root_task_id"),
            "parent_task_id": fields.get("parent_task_id"),
            "agent": fields.get("agent"),
            "delegator": fields.get("delegator"),
            "decision_id": fields.get("decision_id"),
            "lease_id": fields.get("lease_id"),
            "trace_id": fields.get("trace_id"),
            "payload": payload_json,
            "prev_hash": self._head,
        }
        # The hash over the payload text already serialized (``row_hash`` is pinned to
        # ``Event.compute_hash`` by a test): the payload is not serialized a second time.
        row["hash"] = row_hash(
            chain=row["chain"],
            seq=row["seq"],
            ts=row["ts"],
            type=type_,
            prev_hash=row["prev_hash"],
            payload_text=payload_json,
            task_id=row["task_id"],
            root_task_id=row["root_task_id"],
            parent_task_id=row["parent_task_id"],
            agent=row["agent"],
            delegator=row["delegator"],
            decision_id=row["decision_id"],
            lease_id=row["lease_id"],
            trace_id=row["trace_id"],
            v=SCHEMA_VERSION,
        )
        # One raw driver INSERT (``tether.store.raw``): SQLAlchemy's per-statement work costs
        # more than the database write itself.
        raw.execute(self.conn, _INSERT_EVENT_RAW, row).close()
        ev = Event(
            chain=row["chain"],
            seq=row["seq"],
            ts=row["ts"],
            type=type_,
            prev_hash=row["prev_hash"],
            payload=body,
            hash=row["hash"],
            **fields,
        )
        self._head = ev.hash
        self.events.append(ev)
        return ev


class AuditChain:
    """The audit writer of this process (one chain, named by the node id)."""

    def __init__(self, db: Database, chain_id: str) -> None:
        self.db = db
        self.chain_id = chain_id
        self.filters: list[PayloadFilter] = []
        self._listeners: list[Listener] = []
        #: Called with the seconds each non-empty unit took to advance the chain head and commit.
        self.append_hooks: list[Callable[[float], None]] = []
        self._lock = threading.Lock()
        self._seq = 0
        self._head = GENESIS_HASH
        self._loaded = False
        # SQLite: the writer keeps one connection (units are serialized by ``_lock``), so
        # a decision does not pay a pool checkout and return. PostgreSQL checks out each
        # time, so the store's watchdog arms every use (``tether.store.deadline``).
        self._held: Connection | None = None

    def add_listener(self, listener: Listener, *, first: bool = False) -> Callable[[], None]:
        """Call ``listener`` with each event this chain commits; returns a function that removes it.

        Listeners run in order, synchronously after the commit: ``first`` puts one ahead of
        those already added (the credential cut goes before drift learning's transaction)."""
        with _listeners_lock:
            if first:
                self._listeners.insert(0, listener)
            else:
                self._listeners.append(listener)

        def remove() -> None:
            with _listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _load_head(self, conn: Connection) -> None:
        row = conn.execute(
            select(t.audit_chains.c.head_seq, t.audit_chains.c.head_hash).where(
                t.audit_chains.c.chain == self.chain_id
            )
        ).first()
        if row is not None:
            self._seq, self._head = int(row[0]), str(row[1])
        self._loaded = True

    @property
    def head(self) -> tuple[int, str]:
        return self._seq, self._head

    def snapshot(self) -> tuple[int, str]:
        """The committed head as one consistent pair (for checkpoints), loading it if needed."""
        with self._lock:
            if not self._loaded:
                with self.db.read() as conn:
                    self._load_head(conn)
            return self._seq, self._head

    @contextlib.contextmanager
    def unit(self) -> Iterator[Unit]:
        """A transaction whose events commit with it, or not at all."""
        # Bounded like the store itself: a writer stuck on a frozen store must not make
        # every other request wait on this lock forever.
        if not self._lock.acquire(timeout=-1 if self.db.timeout is None else self.db.timeout):
            raise Unavailable(
                "the audit log is busy (the store is not answering); the action is denied",
                code="store_unavailable",
            )
        connected = False
        try:
            try:
                with self._transaction() as conn:
                    connected = True
                    if not self._loaded:
                        self._load_head(conn)
                    u = Unit(conn, self, self._seq, self._head)
                    yield u
                    if u.events:
                        appended = time.perf_counter()
                        self._advance(conn, u)
            except TetherError as exc:
                if exc.code == "audit_conflict":
                    self._loaded = False
                raise
            except SQLAlchemyError as exc:
                # Reload the head next time: a conflicting writer may have moved it.
                self._loaded = False
                # A store that stopped answering (connection cut or pool exhausted) is the
                # store's failure, not the log's: the same code as every other store use.
                lost = (
                    not connected
                    or isinstance(exc, SATimeoutError)
                    or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
                )
                code = "store_unavailable" if lost else "audit_unavailable"
                self.db.note_error(code)
                raise Unavailable(
                    "the audit log could not be written; the action is denied", code=code
                ) from exc
            if u.events:
                self._seq, self._head = u._seq, u._head
                for hook in self.append_hooks:
                    hook(time.perf_counter() - appended)
        finally:
            self._lock.release()
        for ev in u.events:
            with _listeners_lock:
                listeners = [*self._listeners, *_listeners]
            for listener in listeners:
                listener(ev)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction on this writer's connection (the caller holds ``_lock``)."""
        if self.db.dialect != "sqlite":
            with self.db.engine.begin() as conn:
                yield conn
            return
        held = self._held
        if held is None or held.closed or held.invalidated or held.engine is not self.db.engine:
            if held is not None:
                with contextlib.suppress(Exception):
                    held.close()
            held = self._held = self.db.engine.connect()
        conn = held
        try:
            with conn.begin():
                yield conn
        except SQLAlchemyError:
            # A connection the store failed on is never reused: the next unit starts clean.
            # (Any other error has been rolled back by ``begin`` and leaves it usable.)
            self._held = None
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def close(self) -> None:
        """Give back the held connection (before the engine is disposed)."""
        with self._lock:
            conn = self._held
            self._held = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _advance(self, conn: Connection, u: Unit) -> None:
        now = time.time()
        if self._seq == 0:
            conn.execute(
                insert(t.audit_chains).values(
                    chain=self.chain_id, head_seq=u._seq, head_hash=u._head, updated_at=now
                )
            )
            return
        changed = raw.rowcount(
            conn,
            _ADVANCE_HEAD_RAW,
            {"c": self.chain_id, "old": self._seq, "seq": u._seq, "h": u._head, "at": now},
        )
        if changed != 1:
            raise Unavailable(
                f"audit chain `{self.chain_id}` was advanced by another writer; "
                "give each replica its own node_id",
                code="audit_conflict",
            )

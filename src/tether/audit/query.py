"""Reading the log: search by agent, resource, outcome, type, task and time; tail; follow.

Columns that are indexed (``task_id``, ``root_task_id``, ``ts``) are filtered in SQL.
``resource`` and ``outcome`` live in the payload: SQL narrows with ``LIKE`` on the
canonical JSON text (keys sorted, no spaces, so ``"resource":"x"`` is a reliable
substring) and Python confirms on the parsed payload, so a value that merely contains
the text never matches.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, or_, select

from tether.audit.event import EVENT_TYPES, Event, canonical_json
from tether.audit.verify import row_to_event
from tether.errors import InvalidRequest
from tether.store import tables as t
from tether.store.db import Database

_E = t.audit_events.c
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_LIMIT = 100_000


def parse_time(value: str, *, now: float | None = None, field: str = "since") -> float:
    """POSIX seconds from ISO 8601 (naive = UTC), a relative age (``15m``, ``2h``, ``7d``)
    or a plain number of seconds since the epoch."""
    v = value.strip()
    m = _RELATIVE.match(v)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(v)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"`{field}` must be ISO 8601, a relative age like `15m`, or epoch seconds; got `{value}`",
            code="invalid_time",
            field=field,
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True, slots=True)
class EventFilter:
    task_id: str | None = None
    tree: bool = False  # with task_id: the whole tree of the task's root
    types: tuple[str, ...] = ()
    agent: str | None = None
    resource: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None
    chain: str | None = None

    def __post_init__(self) -> None:
        for ty in self.types:
            if ty not in EVENT_TYPES:
                raise InvalidRequest(
                    f"unknown event type `{ty}`; one of {', '.join(sorted(EVENT_TYPES))}",
                    code="unknown_event_type",
                    field="type",
                )
        if self.outcome is not None and self.outcome not in ("allow", "deny", "approval_required"):
            raise InvalidRequest(
                "`decision` must be `allow`, `deny` or `approval_required`",
                code="invalid_outcome",
                field="decision",
            )

    def where(self, q: Select[Any], conn: Connection) -> Select[Any]:
        if self.task_id is not None:
            if self.tree:
                root = (
                    conn.execute(select(_E.root_task_id).where(_E.task_id == self.task_id).limit(1)).scalar()
                    or self.task_id
                )
                q = q.where(or_(_E.root_task_id == root, _E.task_id == root))
            else:
                q = q.where(_E.task_id == self.task_id)
        if self.types:
            q = q.where(_E.type.in_(self.types))
        if self.agent is not None:
            q = q.where(_E.agent == self.agent)
        if self.chain is not None:
            q = q.where(_E.chain == self.chain)
        if self.since is not None:
            q = q.where(_E.ts >= self.since)
        if self.until is not None:
            q = q.where(_E.ts < self.until)
        for key in ("resource", "outcome"):
            value = getattr(self, key)
            if value is not None:
                needle = canonical_json({key: value})[1:-1]
                q = q.where(_E.payload.contains(needle, autoescape=True))
        return q

    def matches(self, e: Event) -> bool:
        return (self.resource is None or e.payload.get("resource") == self.resource) and (
            self.outcome is None or e.payload.get("outcome") == self.outcome
        )


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(
            f"`limit` must be between 1 and {MAX_LIMIT}", code="invalid_limit", field="limit"
        )


def search(
    conn: Connection, flt: EventFilter, *, limit: int = 100, newest_first: bool = False
) -> list[Event]:
    """Events matching ``flt`` in time order (oldest first unless ``newest_first``)."""
    _check_limit(limit)
    order = (_E.ts.desc(), _E.chain.desc(), _E.seq.desc()) if newest_first else (_E.ts, _E.chain, _E.seq)
    out: list[Event] = []
    offset = 0
    # Page until ``limit`` confirmed matches: the LIKE prefilter may over-match.
    while len(out) < limit:
        page = conn.execute(
            flt.where(select(t.audit_events), conn).order_by(*order).offset(offset).limit(limit)
        ).all()
        out.extend(e for e in (row_to_event(r._mapping) for r in page) if flt.matches(e))
        if len(page) < limit:
            break
        offset += len(page)
    return out[:limit]


def tail(conn: Connection, flt: EventFilter, n: int = 20) -> list[Event]:
    """The last ``n`` matching events, oldest first."""
    return list(reversed(search(conn, flt, limit=n, newest_first=True)))


def high_water(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(t.audit_chains.c.chain, t.audit_chains.c.head_seq))
    return {str(r[0]): int(r[1]) for r in rows}


def follow(
    db: Database,
    flt: EventFilter,
    *,
    after: dict[str, int],
    poll_seconds: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Event]:
    """Yield matching events committed after ``after`` (chain → last seq seen), until
    ``stop()``. Per-chain seq marks, not timestamps, so nothing is skipped when replica
    clocks differ or two events share a timestamp. Heads are read first: the head moves
    in the same transaction as its events, so every seq up to it is already committed."""
    marks = dict(after)
    while not stop():
        with db.read() as conn:
            heads = high_water(conn)
            conds = [
                and_(_E.chain == c, _E.seq > marks.get(c, 0), _E.seq <= h)
                for c, h in heads.items()
                if h > marks.get(c, 0)
            ]
            rows = (
                conn.execute(
                    flt.where(select(t.audit_events).where(or_(*conds)), conn).order_by(
                        _E.ts, _E.chain, _E.seq
                    )
                ).all()
                if conds
                else []
            )
        marks.update(heads)
        for r in rows:
            e = row_to_event(r._mapping)
            if flt.matches(e):
                yield e
        if not conds:
            sleep(poll_seconds)

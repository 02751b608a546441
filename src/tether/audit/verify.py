"""Walk every chain and report the first broken link.

Linear and streaming: rows are read in ``seq`` order in batches and only the previous
hash is kept, so memory stays constant whatever the size of the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from tether.audit.event import GENESIS_HASH, Event
from tether.store import tables as t


@dataclass(frozen=True, slots=True)
class Break:
    chain: str
    seq: int
    kind: str  # edited | missing | reordered | inserted | truncated | head_mismatch
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "seq": self.seq, "kind": self.kind, "message": self.message}


@dataclass
class VerifyReport:
    chains: dict[str, int] = field(default_factory=dict)  # chain → events verified
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def events(self) -> int:
        return sum(self.chains.values())

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "chains": self.chains,
                "breaks": [b.to_dict() for b in self.breaks]}


def row_to_event(m: Any) -> Event:
    return Event(chain=m["chain"], seq=m["seq"], ts=m["ts"], type=m["type"], prev_hash=m["prev_hash"],
                 payload=json.loads(m["payload"]), task_id=m["task_id"],
                 root_task_id=m["root_task_id"], parent_task_id=m["parent_task_id"],
                 agent=m["agent"], delegator=m["delegator"], decision_id=m["decision_id"],
                 lease_id=m["lease_id"], trace_id=m["trace_id"], v=m["v"], hash=m["hash"])


def iter_chain(conn: Connection, chain: str, batch: int = 5000) -> Iterator[Event]:
    last = 0
    while True:
        rows = conn.execute(select(t.audit_events)
                            .where(t.audit_events.c.chain == chain, t.audit_events.c.seq > last)
                            .order_by(t.audit_events.c.seq).limit(batch)).all()
        if not rows:
            return
        for r in rows:
            yield row_to_event(r._mapping)
        last = rows[-1]._mapping["seq"]


def verify_chain(conn: Connection, chain: str, head: tuple[int, str] | None) -> tuple[int, Break | None]:
    expected_seq, prev = 1, GENESIS_HASH
    count = 0
    for ev in iter_chain(conn, chain):
        if ev.seq != expected_seq:
            kind = "missing" if ev.seq > expected_seq else "reordered"
            return count, Break(chain, expected_seq, kind,
                                f"expected seq {expected_seq}, found {ev.seq}")
        if ev.prev_hash != prev:
            return count, Break(chain, ev.seq, "reordered" if count else "inserted",
                                f"event {ev.seq} does not link to event {ev.seq - 1}")
        if ev.compute_hash() != ev.hash:
            return count, Break(chain, ev.seq, "edited", f"event {ev.seq} was modified")
        prev = ev.hash
        expected_seq += 1
        count += 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq > count:
            return count, Break(chain, count + 1, "truncated",
                                f"chain ends at {count} but its head says {head_seq}")
        if head_seq == count and head_hash != prev:
            return count, Break(chain, count, "head_mismatch", "last event differs from the recorded head")
    return count, None


def verify_chains(conn: Connection) -> VerifyReport:
    report = VerifyReport()
    heads = {r[0]: (int(r[1]), str(r[2])) for r in conn.execute(
        select(t.audit_chains.c.chain, t.audit_chains.c.head_seq, t.audit_chains.c.head_hash))}
    chains = set(heads) | set(conn.execute(select(t.audit_events.c.chain).distinct()).scalars())
    for chain in sorted(chains):
        count, brk = verify_chain(conn, chain, heads.get(chain))
        report.chains[chain] = count
        if brk is not None:
            report.breaks.append(brk)
    return report

"""The event schema file, the fast row hash, and the `capture_events` helper."""

from __future__ import annotations

import json
import random
from importlib import resources

import jsonschema
import pytest

from tether.audit import event as ev
from tether.audit.event import Event, canonical_for, row_hash
from tether.audit.verify import iter_chain
from tether.testing import capture_events

from .helpers import build_tree


def schema() -> dict:
    return json.loads((resources.files("tether.audit") / "event.schema.json").read_text())


def test_every_event_of_a_real_flow_validates_against_the_shipped_schema(runtime):
    """Events the broker writes (tasks, delegations, decisions, approvals, credentials, calls) fit it."""
    build_tree(runtime)
    validator = jsonschema.Draft202012Validator(schema())
    with runtime.db.read() as conn:
        events = list(iter_chain(conn, runtime.audit.chain_id))
    for e in events:
        validator.validate(e.to_dict())
    assert {
        ev.TASK_OPENED,
        ev.TASK_DELEGATED,
        ev.DECISION,
        ev.APPROVAL_REQUESTED,
        ev.APPROVAL_GRANTED,
        ev.CREDENTIAL_MINTED,
        ev.CALL_FORWARDED,
        ev.TASK_CLOSED,
    } <= {e.type for e in events}


def test_schema_lists_every_event_type_the_code_knows():
    """The schema's `type` enum is exactly the code's set of event types."""
    assert set(schema()["properties"]["type"]["enum"]) == set(ev.EVENT_TYPES)


def test_schema_rejects_a_decision_without_outcome():
    """A decision event must carry its outcome (the schema is not a rubber stamp)."""
    e = Event(
        chain="n",
        seq=1,
        ts=1.0,
        type=ev.DECISION,
        prev_hash="0" * 64,
        payload={"action": "read", "policy_version": "x"},
    )
    d = {**e.to_dict(), "hash": e.compute_hash()}
    assert not jsonschema.Draft202012Validator(schema()).is_valid(d)


@pytest.mark.parametrize("v", ev.SCHEMA_VERSIONS)
def test_row_hash_equals_event_hash_for_varied_events(v):
    """`row_hash` over stored text equals `Event.compute_hash` (unicode, nulls, floats, nesting)."""
    rnd = random.Random(6)
    for i in range(300):
        payload = {
            "s": 'é\u2028"\\' * rnd.randint(0, 3),
            "n": rnd.random() * 10 ** rnd.randint(-5, 12),
            "i": rnd.randint(-(2**53), 2**53),
            "l": [None, True, {"z": 1, "a": [1.5]}],
            "u": "日本",
        }
        e = Event(
            chain=f"node-{i % 3}",
            seq=i + 1,
            ts=1.7e9 + rnd.random(),
            type=ev.DECISION,
            prev_hash=f"{rnd.getrandbits(256):064x}",
            payload=payload,
            agent=rnd.choice([None, "spiffe://x/ä"]),
            task_id=rnd.choice([None, "tsk_1"]),
            trace_id=rnd.choice([None, "t"]),
            lease_id="l",
            decision_id=None,
            v=v,
        )
        assert (
            row_hash(
                chain=e.chain,
                seq=e.seq,
                ts=e.ts,
                type=e.type,
                prev_hash=e.prev_hash,
                payload_text=canonical_for(v)(e.payload),  # what the writer of version v stored
                task_id=e.task_id,
                root_task_id=None,
                parent_task_id=None,
                agent=e.agent,
                delegator=None,
                decision_id=None,
                lease_id=e.lease_id,
                trace_id=e.trace_id,
                v=e.v,
            )
            == e.compute_hash()
        )


def test_capture_events_collects_what_the_broker_commits(runtime):
    """`tether.testing.capture_events` yields the committed events of the block, in order."""
    with capture_events() as events:
        tree = build_tree(runtime)
    opened = [e for e in events if e.type == ev.TASK_OPENED]
    assert [e.task_id for e in opened] == [tree.root, tree.child, tree.grandchild]
    assert all(e.hash for e in events)


def test_capture_events_sees_nothing_from_a_rolled_back_unit(runtime):
    """An event whose transaction rolled back is never delivered to listeners."""
    with capture_events() as events:
        try:
            with runtime.audit.unit() as u:
                u.emit(ev.POLICY_LOADED, {"version": "x"})
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    assert events == []

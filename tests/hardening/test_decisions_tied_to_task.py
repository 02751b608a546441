"""Every decision made after the token verified belongs to its task — including the
refusals of an action or a resource the broker does not know (probing)."""

from __future__ import annotations

import pytest

from tether.audit.chain import capture_events
from tether.audit.query import EventFilter, search
from tether.audit.trace import build_trace

READ_Q = {"action": "read", "resource": "tickets.queue"}
PROBES = [("sudo", "tickets.queue", "unknown_action"), ("read", "../../etc/passwd", "unknown_resource")]


@pytest.fixture
def opened(agent):
    return agent.open([READ_Q]).json()


@pytest.mark.parametrize("action, resource, code", PROBES)
def test_catalog_probe_deny_carries_task_agent_and_decision_id(agent, opened, action, resource, code):
    """An unknown action or resource is a 400 with a decision id, recorded with task and agent."""
    with capture_events() as events:
        r = agent.authorize(opened["task_token"], action, resource)
    assert r.status_code == 400 and r.json()["code"] == code
    (e,) = events
    assert e.type == "decision" and e.payload["outcome"] == "deny" and e.payload["code"] == code
    assert (e.task_id, e.agent) == (opened["task_id"], agent.spiffe_id)
    assert e.decision_id == r.json()["decision_id"]


def test_catalog_probes_appear_in_trace_and_agent_search(agent, opened, runtime):
    """`audit trace` and `audit search --agent` show the probing refusals of the task."""
    for action, resource, _ in PROBES:
        agent.authorize(opened["task_token"], action, resource)
    with runtime.db.read() as conn:
        trace = build_trace(conn, opened["task_id"])
        found = search(conn, EventFilter(agent=agent.spiffe_id, types=("decision",)))
    traced = [i.event.payload.get("code") for i in trace.root.items if i.event.type == "decision"]
    assert sorted(traced) == sorted(c for *_, c in PROBES)
    assert sorted(e.payload["code"] for e in found) == sorted(c for *_, c in PROBES)


def test_catalog_probes_count_toward_call_burst(agent, opened):
    """Probing calls count in `calls_last_minute`, so a burst rule sees a probing agent."""
    for _ in range(3):
        agent.authorize(opened["task_token"], "read", "no.such.resource")
    with capture_events() as events:
        r = agent.authorize(opened["task_token"], "read", "tickets.queue")
    assert r.status_code == 200, r.text
    assert events[-1].payload["risk"]["calls_last_minute"] == 3

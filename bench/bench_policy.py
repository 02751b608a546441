"""Cost of one policy decision: ``PolicyEngine.decide`` against raw ``cedarpy``.

Runs the shipped example policies and catalog on a representative request (a triage
agent commenting on a ticket, with call arguments) and prints median and p99 latency:

    engine.decide                      the whole engine, including the per-request delta
    cedarpy, handles                   is_authorized with the same PolicySet/Entities/Schema
                                       handles and a prebuilt per-request entities handle
    cedarpy, handles + delta           as above, plus with_added_json_str for agent and call
    cedarpy, strings                   policy text, entity JSON and schema text re-parsed

    python bench/bench_policy.py [iterations]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cedarpy

from tether.arguments import EMPTY
from tether.catalog import load_catalog
from tether.model import Outcome
from tether.policy import (
    PolicyEngine,
    PolicyPrincipal,
    PolicyRequest,
    action_context,
    request_context,
    risk_context,
    task_context,
)
from tether.policy.loader import schema_text

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "tether" / "examples"


def measure(fn: Callable[[], object], iterations: int) -> tuple[float, float]:
    for _ in range(min(200, iterations)):  # warm caches and the allocator
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return statistics.median(samples) / 1000, p99 / 1000


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    catalog = load_catalog(EXAMPLES / "catalog.yaml")
    engine = PolicyEngine.from_paths(EXAMPLES / "policies", catalog)
    principal = PolicyPrincipal(
        "spiffe://support.example/agent/triage", "support.example", "jwt-svid", {"team": "support"}
    )
    resource = catalog.resources["tickets.comment"]
    context = action_context(
        task=task_context(id="t-1", intent="support.triage", age_seconds=30, remaining_seconds=870),
        risk=risk_context(calls_last_minute=3, max_sensitivity_read=2),
        request=request_context(method="POST", path="/tickets/T-1042/comments"),
        environment="prod",
    )
    arguments = {"ticket_id": "T-1042", "body": "we are looking into it", "notify": True}
    request = PolicyRequest(principal, "tool:call", resource, context, arguments)
    assert engine.decide(request).outcome is Outcome.ALLOW

    # The same inputs, spelled out for cedarpy directly.
    policy_text = "\n".join(p.read_text() for p in sorted((EXAMPLES / "policies").glob("*.cedar")))
    delta = [
        {
            "uid": {"type": "Tether::Agent", "id": principal.spiffe_id},
            "attrs": {"trust_domain": "support.example", "attestation": "jwt-svid"},
            "tags": {"team": "support"},
            "parents": [],
        },
        {
            "uid": {"type": "Tether::Call", "id": "call"},
            "attrs": {},
            "tags": {"ticket_id": "T-1042", "body": "we are looking into it", "notify": "true"},
            "parents": [],
        },
    ]
    delta.append(EMPTY.cedar_entity({"type": "Tether::Args", "id": "args"}))  # no typed arguments
    delta_json = json.dumps(delta)
    all_entities_json = json.dumps([r.cedar_entity() for r in catalog.resources.values()] + delta)
    raw_request = {
        "principal": {"type": "Tether::Agent", "id": principal.spiffe_id},
        "action": {"type": "Tether::Action", "id": "tool:call"},
        "resource": resource.cedar_uid,
        "context": dict(
            context,
            call={"__entity": {"type": "Tether::Call", "id": "call"}},
            args={"__entity": {"type": "Tether::Args", "id": "args"}},
        ),
    }
    policy_set = engine.bundle.policy_set
    schema = engine.schema
    base = cedarpy.Entities.from_json_str(catalog.entities_json(), schema)
    full = base.with_added_json_str(delta_json)
    text_schema = schema_text()

    def raw_handles() -> object:
        return cedarpy.is_authorized(raw_request, policy_set, full, schema)

    def raw_handles_delta() -> object:
        return cedarpy.is_authorized(raw_request, policy_set, base.with_added_json_str(delta_json), schema)

    def raw_strings() -> object:
        return cedarpy.is_authorized(raw_request, policy_text, all_entities_json, text_schema)

    for check in (raw_handles, raw_handles_delta, raw_strings):
        assert check().decision == cedarpy.Decision.Allow  # type: ignore[attr-defined]

    rows = [
        ("engine.decide", lambda: engine.decide(request), iterations),
        ("cedarpy, handles", raw_handles, iterations),
        ("cedarpy, handles + delta", raw_handles_delta, iterations),
        ("cedarpy, strings", raw_strings, max(200, iterations // 5)),
    ]
    print(f"{len(engine.bundle.policies)} policies, {len(catalog.resources)} catalog entities")
    print(f"{'path':<28}{'n':>7}{'median µs':>12}{'p99 µs':>10}")
    for name, fn, n in rows:
        median, p99 = measure(fn, n)
        print(f"{name:<28}{n:>7}{median:>12.1f}{p99:>10.1f}")


if __name__ == "__main__":
    main()

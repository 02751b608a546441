"""What shadow mode adds to a decision: `PolicyEngine.decide` and `Broker.authorize` with
and without a shadow set, interleaved (the same machine load for both), wall and CPU time.

The shadow set is a copy of the enforced one (no divergence events: the pure cost of the
second evaluation), and the floor it is compared with, in the same run: one raw Cedar
evaluation of the same request over a cached entities handle. The last line gives what
shadow adds in Cedar evaluations (the target: at most one).
Run: `python bench/bench_shadow.py [-n N] [--store URL]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import cedarpy
import orjson
from _stats import measure_cpu, measure_pair, summary, table

from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.model import Grant, Workload
from tether.policy import PolicyPrincipal, PolicyRequest, action_context
from tether.policy.context import risk_context, task_context
from tether.policy.replay import Replayer
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", help="store URL (default: SQLite in a temp dir)")
    ap.add_argument("-n", type=int, default=300)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-shadow-"))
    domain = TestTrustDomain("support.example")
    settings = make_settings(
        tmp / "state", store_url=args.store, domain=domain, overrides={"environment": "prod"}
    )
    taint = settings.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    shadow_dir = tmp / "shadow"
    shutil.copytree(settings.policy_path, shadow_dir)
    rt = Runtime.start(settings)
    engine, broker = rt.engine, rt.broker
    wl = Workload(domain.spiffe_id("bench"), domain.name, "jwt-svid")
    token = broker.open_task(
        wl, OpenTaskRequest("support.triage", "bench", (Grant("read", "tickets.queue"),), 3600)
    ).token
    req = AuthorizeRequest("read", "tickets.queue", {"ticket": "T-1"})
    resource = rt.catalog.get("tickets.queue")
    assert resource is not None
    preq = PolicyRequest(
        principal=PolicyPrincipal(wl.spiffe_id, domain.name, "jwt-svid"),
        action="read",
        resource=resource,
        context=action_context(
            task=task_context(intent="support.triage", id="tsk_x"), risk=risk_context(), environment="prod"
        ),
        arguments={"ticket": "T-1"},
    )
    shadow = engine.load_shadow(shadow_dir)

    def on() -> None:
        engine.set_shadow(shadow, str(shadow_dir))

    def with_shadow_decide() -> object:
        on()
        return engine.decide(preq)

    def without_shadow_decide() -> object:
        engine.clear_shadow()
        return engine.decide(preq)

    def with_shadow_authorize() -> object:
        on()
        return broker.authorize(token, req)

    def without_shadow_authorize() -> object:
        engine.clear_shadow()
        return broker.authorize(token, req)

    on()
    assert broker.authorize(token, req).decision.allowed
    d_on, d_off = measure_pair(with_shadow_decide, without_shadow_decide, args.n)
    a_on, a_off = measure_pair(with_shadow_authorize, without_shadow_authorize, args.n)
    rows = [
        ("PolicyEngine.decide, no shadow", d_off),
        ("PolicyEngine.decide, shadow (same set)", d_on),
        ("Broker.authorize allow + audit, no shadow", a_off),
        ("Broker.authorize allow + audit, shadow (same set)", a_on),
    ]
    table(f"shadow overhead, wall time, n={args.n} ({rt.db.dialect})", rows)
    # The floor: one cedarpy evaluation of this very request over a cached entities handle.
    engine.clear_shadow()
    recorded = engine.decide(preq).input
    assert recorded is not None
    replayer = Replayer(engine.bundle, rt.catalog, engine.schema)
    built = replayer._build(orjson.loads(orjson.dumps(recorded)), False)
    assert built is not None
    delta, cedar_request, _ = built
    entities = replayer._entities(delta, delta)
    policy_set = engine.bundle.policy_set

    def cedar_once() -> object:
        return cedarpy.is_authorized(cedar_request, policy_set, entities, engine.schema)

    named = [
        ("floor: one Cedar evaluation (cached handle)", cedar_once),
        ("PolicyEngine.decide, no shadow", without_shadow_decide),
        ("PolicyEngine.decide, shadow", with_shadow_decide),
        ("Broker.authorize, no shadow", without_shadow_authorize),
        ("Broker.authorize, shadow", with_shadow_authorize),
    ]
    samples = _cpu_interleaved([fn for _, fn in named], args.n)
    cpu = [(name, s) for (name, _), s in zip(named, samples, strict=True)]
    table("the same, CPU time of this process per call (interleaved blocks)", cpu)
    (floor, _) = summary(cpu[0][1])
    (d0, _), (d1, _) = summary(cpu[1][1]), summary(cpu[2][1])
    (a0, _), (a1, _) = summary(cpu[3][1]), summary(cpu[4][1])
    print(
        f"\nshadow adds (CPU, median): decide +{d1 - d0:.0f} µs ({(d1 - d0) / floor:.2f} Cedar evaluations), "
        f"authorize +{a1 - a0:.0f} µs ({(a1 - a0) / floor:.2f} Cedar evaluations); "
        f"one evaluation {floor:.0f} µs"
    )
    rt.close()


def _cpu_interleaved(fns: list[Callable[[], object]], n: int, blocks: int = 10) -> list[list[float]]:
    """Per-call CPU µs of each of ``fns``, measured in alternating blocks so that all see
    the same machine load (CPU time also varies with the load on a shared machine)."""
    out: list[list[float]] = [[] for _ in fns]
    per = max(1, n // blocks)
    for _ in range(blocks):
        for fn, samples in zip(fns, out, strict=True):
            samples.extend(measure_cpu(fn, per, warmup=5))
    return out


if __name__ == "__main__":
    main()

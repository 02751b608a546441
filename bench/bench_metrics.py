"""The hot-path cost of the Prometheus counters (`tether.metrics`).

In-process `Broker.authorize` (allow, audit commit) on SQLite with the metrics hooks
installed and with them removed, in alternating blocks so both see the same machine
load; then the per-decision work of the hooks alone (the audit listener on one
`decision` event plus one append observation), which is what the difference is made of.
Run: `python bench/bench_metrics.py [-n N]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stats import measure, measure_pair, summary, table

from tether import metrics
from tether.audit import event as ev
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=300)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    domain = TestTrustDomain("support.example")
    settings = make_settings(
        tmp / "state", domain=domain, overrides={"environment": "prod", "identity": {"dpop": "optional"}}
    )
    taint = settings.policy_path / "20-taint.cedar"  # lift the burst rule: measure allows
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    rt = Runtime.start(settings)
    wl = Workload(domain.spiffe_id("bench"), domain.name, "jwt-svid")
    token = rt.broker.open_task(
        wl, OpenTaskRequest("support.triage", "bench", (Grant("read", "tickets.queue"),), 3600)
    ).token
    req = AuthorizeRequest("read", "tickets.queue", {"ticket": "T-1"})
    m = metrics.metrics()
    assert m.on_event in rt.audit._listeners

    def off() -> None:
        rt.audit._listeners.remove(m.on_event)
        rt.audit.append_hooks.remove(m.on_append)
        try:
            rt.broker.authorize(token, req)
        finally:
            rt.audit._listeners.append(m.on_event)
            rt.audit.append_hooks.append(m.on_append)

    on, without = measure_pair(lambda: rt.broker.authorize(token, req), off, args.n)
    event = ev.Event(
        "node-1", 1, 0.0, ev.DECISION, "", {"outcome": "allow", "code": "", "latency_ms": 0.4}, task_id="t"
    )

    def hooks() -> None:
        m.on_event(event)
        m.on_append(0.0004)

    alone = measure(hooks, args.n * 10)
    table(
        "metrics on the authorize path (SQLite, in process)",
        [
            ("authorize, metrics hooks installed", on),
            ("authorize, hooks removed", without),
            ("the hooks alone: decision listener + append observation", alone),
        ],
    )
    a, b, h = summary(on)[0], summary(without)[0], summary(alone)[0]
    print(f"\ndifference of medians: {a - b:+.1f} µs ({(a - b) / b * 100:+.1f} %); hooks alone {h:.2f} µs")
    rt.close()


if __name__ == "__main__":
    main()

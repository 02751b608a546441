"""`tether policy replay` speed: decisions re-decided per second, from the store.

Records N real decisions through `Broker.authorize` (a few agents, tools and arguments,
one of them masked), then replays them with a candidate set that flips some, the way
the CLI does (stream from the store, parse, batch through cedarpy). Reported: the whole
replay (read + parse + decide) and the decide step alone. Run:
`python bench/bench_replay.py [-n N] [--repeat R] [--store URL]`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from tether.audit.masking import salt_from_master_key
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.cli.policy_change import _records
from tether.identity.keys import load_master_key
from tether.model import Grant, Workload
from tether.policy import load_bundle, load_schema
from tether.policy.replay import Replayer, ReplayReport, recorded_from_event
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings

CANDIDATE = """
@id("no-comments")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"tickets.comment")
when { context.call.hasTag("customer_token") && context.call.getTag("customer_token") == "tok-3" };
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", help="store URL (default: SQLite in a temp dir)")
    ap.add_argument("-n", type=int, default=5000, help="decisions to record")
    ap.add_argument("--repeat", type=int, default=5, help="replays to time")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-replay-"))
    domain = TestTrustDomain("support.example")
    settings = make_settings(
        tmp / "state", store_url=args.store, domain=domain, overrides={"environment": "prod"}
    )
    taint = settings.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    rt = Runtime.start(settings)
    scope = (Grant("read", "tickets.queue"), Grant("tool:call", "tickets.comment"), Grant("read", "crm"))
    tokens = [
        rt.broker.open_task(
            Workload(domain.spiffe_id(f"agent-{i}"), domain.name, "jwt-svid"),
            OpenTaskRequest("support.triage", "bench", scope, 3600),
        ).token
        for i in range(8)
    ]
    t0 = time.perf_counter()
    for i in range(args.n):
        tok = tokens[i % len(tokens)]
        if i % 3 == 0:
            req = AuthorizeRequest("read", "tickets.queue", {"ticket": f"T-{i}"})
        elif i % 3 == 1:
            req = AuthorizeRequest("tool:call", "tickets.comment", {"customer_token": f"tok-{i % 7}", "n": i})
        else:
            req = AuthorizeRequest("read", "crm", {})
        rt.broker.authorize(tok, req)
    print(f"recorded {args.n} decisions in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    cand = tmp / "candidate"
    shutil.copytree(settings.policy_path, cand)
    (cand / "90-candidate.cedar").write_text(CANDIDATE)
    schema = load_schema()
    bundle = load_bundle(cand, schema)
    salt = salt_from_master_key(load_master_key(settings.state_dir))

    def fresh() -> Replayer:  # a new replayer per run: no answer cached from the previous one
        return Replayer(bundle, rt.catalog, schema, salt=salt, policy_texts=bundle.sources.values())

    replayer = fresh()

    whole: list[float] = []
    report = ReplayReport(bundle.version, replayer.catalog_version)
    for _ in range(args.repeat):
        report = ReplayReport(bundle.version, replayer.catalog_version)
        replayer = fresh()
        t = time.perf_counter()
        replayer.replay(_records(rt.db, 0.0, None), report)
        whole.append(report.replayed / (time.perf_counter() - t))
    # The decide step alone: records already parsed in memory.
    from sqlalchemy import select

    from tether.store import tables as tb

    e = tb.audit_events.c
    with rt.db.read() as conn:
        rows = conn.execute(select(e.v, e.payload, e.decision_id, e.agent).where(e.type == "decision")).all()
    parsed = [recorded_from_event(int(v), orjson.loads(p), d, a) for v, p, d, a in rows]
    decide: list[float] = []
    for _ in range(args.repeat):
        r = ReplayReport(bundle.version, replayer.catalog_version)
        replayer = fresh()
        t = time.perf_counter()
        replayer.replay(parsed, r)
        decide.append(r.replayed / (time.perf_counter() - t))
    rt.close()
    print(
        f"replayed {report.replayed} decisions, {report.flips} flips, {report.inexact} inexact; "
        f"batch size {512}"
    )
    for label, rates in (("store → report (as the CLI)", whole), ("decide only (parsed records)", decide)):
        print(
            f"{label:32} median {statistics.median(rates):8.0f} decisions/s   "
            f"worst {min(rates):8.0f}/s   (runs: {len(rates)})"
        )


if __name__ == "__main__":
    main()

"""`tether policy replay` speed: decisions re-decided per second, from the store.

Records N real decisions through `Broker.authorize` (8 agents, three tools, arguments
that differ on every call, one of them masked), then replays them with a candidate set
that flips some, the way the CLI does: read the window from the store, parse each event,
key it by what the candidate can see, ask Cedar on a miss. `--copies K` adds K copies of
every recorded decision event (same input, own decision id, same timestamp, on chains of
their own) so that a window long enough for the worker processes can be had without
recording it call by call; a copy asks nothing new of Cedar, as a repeated call would not.

Reported, each over `--repeat` runs with cold caches (a new replayer per run): the replay
in this process (`--jobs 1`), with `--jobs N` workers (all the cores by default), and the
decide step alone (records already parsed). Beside them, measured in the same run, the
floors: reading + parsing the window alone, and one Cedar evaluation per decision over a
cached handle (what a replay without the answer cache could at most do in one process).
Wall time is what the machine's load allows; CPU time per decision (of this process; the
workers' is not readable from here) is the steadier figure on a shared machine.
Run: `python bench/bench_replay.py [-n N] [--copies K] [--repeat R] [--jobs N] [--store URL]`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.policy.replay import Replayer, ReplayReport
    from tether.runtime import Runtime

# Tether is imported inside main(): the replay workers import this file again as their
# `__main__` (multiprocessing does), and should not pay for the broker and the test kit.

CANDIDATE = """
@id("no-comments")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"tickets.comment")
when { context.call.hasTag("customer_token") && context.call.getTag("customer_token") == "tok-3" };
"""


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the replay workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _copy_events(rt: Runtime, copies: int) -> None:
    from sqlalchemy import insert, select

    from tether.store import tables as tb

    e = tb.audit_events.c
    with rt.db.read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(tb.audit_events).where(e.type == "decision"))]
    for k in range(copies):
        batch = []
        for seq, row in enumerate(rows, start=1):
            batch.append(
                {**row, "chain": f"bench-copy-{k}", "seq": seq, "decision_id": f"{row['decision_id']}-{k}"}
            )
        with rt.db.begin() as conn:
            conn.execute(insert(tb.audit_events), batch)


def main() -> None:
    import orjson
    from sqlalchemy import select

    from tether.audit.masking import salt_from_master_key
    from tether.broker import AuthorizeRequest, OpenTaskRequest
    from tether.identity.keys import load_master_key
    from tether.model import Grant, Workload
    from tether.policy import load_bundle, load_schema
    from tether.policy.replay import Replayer, ReplayReport, recorded_from_event
    from tether.policy.replay_window import Job, count, jobs_default, records, replay_window
    from tether.runtime import Runtime
    from tether.store import tables as tb
    from tether.testing import TestTrustDomain, make_settings

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", help="store URL (default: SQLite in a temp dir)")
    ap.add_argument("-n", type=int, default=2000, help="decisions to record")
    ap.add_argument("--copies", type=int, default=0, help="copies of each recorded decision event")
    ap.add_argument("--repeat", type=int, default=3, help="replays to time")
    ap.add_argument("--jobs", type=int, default=jobs_default(), help="workers for the parallel replay")
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

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
    if args.copies:
        _copy_events(rt, args.copies)
    total = count(rt.db, 0.0, None)

    cand = tmp / "candidate"
    shutil.copytree(settings.policy_path, cand)
    (cand / "90-candidate.cedar").write_text(CANDIDATE)
    schema = load_schema()
    bundle = load_bundle(cand, schema)
    salt = salt_from_master_key(load_master_key(settings.state_dir))

    def fresh() -> Replayer:  # a new replayer per run: no answer cached from the previous one
        return Replayer(bundle, rt.catalog, schema, salt=salt, policy_texts=bundle.sources.values())

    probe = fresh()
    job = Job(
        str(cand), bundle.version, str(settings.catalog_path), probe.catalog_version, settings.store_url, salt
    )

    def timed(run: Callable[[], ReplayReport]) -> tuple[list[float], list[float], ReplayReport]:
        """Decisions/s and CPU µs/decision of each run, and the last report."""
        rates, cpus = [], []
        report = ReplayReport(bundle.version, probe.catalog_version)
        for _ in range(args.repeat):
            t, c = time.perf_counter(), _cpu()
            report = run()
            rates.append(report.decisions / (time.perf_counter() - t))
            cpus.append((_cpu() - c) / report.decisions * 1e6)
        return rates, cpus, report

    one = timed(lambda: replay_window(fresh(), rt.db, 0.0, None, total=total, jobs=1))
    many = timed(
        lambda: replay_window(fresh(), rt.db, 0.0, None, total=total, jobs=args.jobs, job=job, parallel_min=0)
    )
    parsed = list(records(rt.db, 0.0, None))
    decide = timed(lambda: fresh().replay(parsed))
    # Floors, in the same run.
    read = timed(lambda: _count_only(records(rt.db, 0.0, None), bundle.version, probe.catalog_version))
    with rt.db.read() as conn:
        e = tb.audit_events.c
        payload = conn.execute(select(e.payload).where(e.type == "decision").limit(1)).scalar_one()
    cedar_us = _cedar_floor(probe, recorded_from_event(3, orjson.loads(payload), "x", None), args.repeat)
    rt.close()

    report = one[2]
    assert report.to_dict() | {"seconds": 0, "evaluated": 0} == many[2].to_dict() | {
        "seconds": 0,
        "evaluated": 0,
    }
    print(
        f"{report.decisions} decisions ({args.n} recorded, {args.copies} copies each), {report.flips} flips, "
        f"{report.inexact} inexact; Cedar asked {report.evaluated} times in one process, "
        f"{many[2].evaluated} times over {args.jobs} workers"
    )
    for label, (rates, cpus, _) in (
        ("store → report, --jobs 1", one),
        (f"store → report, --jobs {args.jobs}", many),
        ("decide only (parsed records)", decide),
        ("floor: read + parse only", read),
    ):
        # The workers are the fork server's children, not this process's: their CPU time
        # is not ours to read, so the parallel run has wall time only.
        cpu = "" if rates is many[0] else f"CPU {statistics.median(cpus):6.1f} µs/decision   "
        print(
            f"{label:32} median {statistics.median(rates):8.0f} decisions/s   worst {min(rates):8.0f}/s   "
            f"{cpu}(runs: {len(rates)})"
        )
    print(
        f"{'floor: one Cedar call each':32} median {1e6 / cedar_us:8.0f} decisions/s   "
        f"({cedar_us:.0f} µs CPU per cached-handle evaluation)"
    )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    shutil.rmtree(tmp, ignore_errors=True)  # with --copies, hundreds of MB


def _count_only(recs: object, version: str, catalog_version: str) -> ReplayReport:
    from tether.policy.replay import ReplayReport

    out = ReplayReport(version, catalog_version)
    for _ in recs:  # type: ignore[attr-defined]
        out.decisions += 1
    return out


def _cedar_floor(replayer: Replayer, rec: object, repeat: int) -> float:
    """CPU µs of one cedarpy evaluation of a recorded request over a cached handle."""
    import cedarpy

    from tether.policy.replay import Recorded

    assert isinstance(rec, Recorded)
    built = replayer._build(rec.input, rec.masked)
    assert built is not None
    delta, request, _ = built
    entities = replayer._entities(delta, delta)
    policy_set = replayer.bundle.policy_set
    runs = []
    for _ in range(repeat):
        c = time.process_time()
        for _ in range(300):
            cedarpy.is_authorized(request, policy_set, entities, replayer.schema)
        runs.append((time.process_time() - c) / 300 * 1e6)
    return statistics.median(runs)


if __name__ == "__main__":
    main()

"""Growth: does a decision stay as cheap when the policy set and the store grow?

Two comparisons, each between two brokers started side by side in this process and
measured in alternating blocks (so both see the same machine load):

* policies: the shipped set padded to 30 policies vs padded to 1,000 (generated policies
  of the shapes people write: per-agent forbids, per-intent permits with conditions);
* store: an empty store vs one holding ``--events`` audit events (default 1,000,000) and
  ``--tasks`` active tasks (default 10,000), bulk-inserted with ``executemany``.

The figure is ``Broker.authorize`` (allow + audit, no credential) on SQLite.

Run: ``python bench/bench_growth.py [-n 500] [--events 1000000] [--tasks 10000]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stats import emit, measure, measure_cpu, summary, table

from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings

OVERRIDES = {"environment": "prod", "identity": {"dpop": "optional"}}
DOMAIN = TestTrustDomain("support.example")
AGENT = Workload(DOMAIN.spiffe_id("bench"), DOMAIN.name, "jwt-svid")
REQ = AuthorizeRequest("read", "tickets.queue", {"ticket": "T-1"})


def generated_policies(n: int) -> str:
    out = []
    for i in range(n):
        if i % 2:
            out.append(
                f'@id("gen-forbid-{i}")\n@reason("generated per-agent forbid {i}")\n'
                f'forbid (principal == Tether::Agent::"spiffe://support.example/other-{i}",\n'
                f'  action in Tether::Action::"reads", resource)\n'
                f"when {{ context.risk.calls_last_minute > {i % 50} }};\n"
            )
        else:
            out.append(
                f'@id("gen-permit-{i}")\n@reason("generated per-intent permit {i}")\n'
                f'permit (principal, action in Tether::Action::"reads", resource)\n'
                f'when {{ context.task.intent == "gen.intent.{i}" &&\n'
                f'  resource in Tether::Service::"tickets" }};\n'
            )
    return "\n".join(out)


def start(state: Path, total_policies: int | None = None) -> tuple[Runtime, str]:
    settings = make_settings(state, domain=DOMAIN, overrides=OVERRIDES)
    taint = settings.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    if total_policies is not None:
        shipped = sum(p.read_text().count("@id(") for p in settings.policy_path.glob("*.cedar"))
        (settings.policy_path / "90-generated.cedar").write_text(generated_policies(total_policies - shipped))
    rt = Runtime.start(settings)
    rt.broker.allow_hooks.clear()
    opened = rt.broker.open_task(
        AGENT, OpenTaskRequest("support.triage", "bench", (Grant("read", "tickets.queue"),), 3600)
    )
    return rt, opened.token


def fill(rt: Runtime, events: int, tasks: int) -> None:
    """Bulk-insert ``tasks`` active tasks and ``events`` audit events on a chain of their own."""
    rnd = random.Random(7)
    now = time.time()
    raw = rt.db.engine.raw_connection()
    cur = raw.cursor()
    # A bulk load, not a workload: no fsync, and a page cache that holds the indexes (the
    # task index is written in random order and would otherwise thrash the disk).
    cur.execute("PRAGMA synchronous=OFF")
    cur.execute("PRAGMA cache_size=-1000000")
    ids = [f"tsk_bulk_{i}" for i in range(tasks)]
    scope = json.dumps([{"action": "read", "resource": "tickets.queue"}])
    cur.executemany(
        "INSERT INTO tasks (id, agent, attestation, agent_attrs, delegator_sub, delegator_iss, intent, "
        "description, scope, created_at, expires_at, parent_id, root_id, depth, state, act_chain, cnf_jkt, "
        "closed_at, max_sensitivity_read) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                t,
                f"spiffe://support.example/agent-{i % 500}",
                "jwt-svid",
                "{}",
                None,
                None,
                "support.triage",
                "bulk",
                scope,
                now - 600,
                now + 3600,
                None,
                t,
                0,
                "active",
                "[]",
                None,
                None,
                -1,
            )
            for i, t in enumerate(ids)
        ],
    )
    payload = json.dumps(
        {"action": "read", "resource": "tickets.queue", "outcome": "allow", "policy_version": "x" * 71}
    )
    sql = (
        "INSERT INTO audit_events (chain, seq, v, ts, type, task_id, root_task_id, parent_task_id, agent, "
        "delegator, decision_id, lease_id, trace_id, payload, prev_hash, hash) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    batch: list[tuple[object, ...]] = []
    for seq in range(1, events + 1):
        task = ids[rnd.randrange(tasks)]
        batch.append(
            (
                "bulk",
                seq,
                1,
                now - 86400 + seq * 86400 / events,
                "decision",
                task,
                task,
                None,
                "spiffe://support.example/agent",
                None,
                f"dec_{seq}",
                None,
                None,
                payload,
                "0" * 64,
                "0" * 64,
            )
        )
        if len(batch) == 50_000:  # one commit per batch: the broker's reaper needs the lock too
            cur.executemany(sql, batch)
            raw.commit()
            batch.clear()
    if batch:
        cur.executemany(sql, batch)
    raw.commit()
    cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cur.execute("ANALYZE")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA cache_size=-2000")
    raw.close()


def compare(
    a: tuple[Runtime, str], b: tuple[Runtime, str], n: int, blocks: int = 5, *, cpu: bool = False
) -> tuple[list[float], list[float]]:
    """Wall time per call (or, with ``cpu``, CPU time of this process), in alternating blocks."""
    timer = measure_cpu if cpu else measure
    sa: list[float] = []
    sb: list[float] = []
    for i in range(blocks):
        warm = 50 if i == 0 else 5
        sa += timer(lambda: a[0].broker.authorize(a[1], REQ), n // blocks, warm)
        sb += timer(lambda: b[0].broker.authorize(b[1], REQ), n // blocks, warm)
    return sa, sb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--tasks", type=int, default=10_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-growth-"))

    small, big = start(tmp / "p30", 30), start(tmp / "p1000", 1000)
    n30, n1000 = len(small[0].engine.bundle.policies), len(big[0].engine.bundle.policies)
    s30, s1000 = compare(small, big, args.n)
    c30, c1000 = compare(small, big, args.n, cpu=True)
    small[0].close()
    big[0].close()

    empty, full = start(tmp / "empty"), start(tmp / "full")
    t0 = time.perf_counter()
    fill(full[0], args.events, args.tasks)
    print(
        f"filled a store with {args.events:,} events and {args.tasks:,} tasks "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    se, sf = compare(empty, full, args.n)
    empty[0].close()
    full[0].close()

    table(
        f"authorize as the policy set and the store grow, n={args.n}",
        [
            (f"{n30} policies", s30),
            (f"{n1000} policies", s1000),
            (f"{n30} policies, CPU time", c30),
            (f"{n1000} policies, CPU time", c1000),
            ("empty store", se),
            (f"{args.events:,} events, {args.tasks:,} active tasks", sf),
        ],
    )
    (p50, p99), (f50, f99) = summary(s1000), summary(s30)
    emit(
        "growth_policies",
        f"authorize with {n1000:,} policies vs {n30}",
        unit="µs",
        p50=p50,
        p99=p99,
        floor_p50=f50,
        floor_p99=f99,
        floor=f"{n30} policies: {f50:.0f} / {f99:.0f} µs",
        target="≤ 3× p50",
        met=p50 <= 3 * f50,
    )
    (p50, p99), (f50, f99) = summary(c1000), summary(c30)
    emit(
        "growth_policies_cpu",
        f"CPU time: authorize with {n1000:,} policies vs {n30}",
        unit="µs",
        p50=p50,
        p99=p99,
        floor_p50=f50,
        floor_p99=f99,
        floor=f"{n30} policies CPU time: {f50:.0f} / {f99:.0f} µs",
        target="≤ 3× p50",
        met=p50 <= 3 * f50,
    )
    (p50, p99), (f50, f99) = summary(sf), summary(se)
    emit(
        "growth_store",
        f"authorize on a store of {args.events:,} events + {args.tasks:,} active tasks vs empty",
        unit="µs",
        p50=p50,
        p99=p99,
        floor_p50=f50,
        floor_p99=f99,
        floor=f"empty store: {f50:.0f} / {f99:.0f} µs",
        target="≤ 1.2× p50",
        met=p50 <= 1.2 * f50,
    )


if __name__ == "__main__":
    main()

"""Audit benchmarks: `verify` throughput on 1,000,000 events, `trace` time on a 10,000-event tree.

Plain script (not a timed test):

    .venv/bin/python bench/bench_audit.py                 # 1,000,000 events, 10,000-event tree
    .venv/bin/python bench/bench_audit.py --events 100000 # quicker

The log is generated fast and valid: rows are hashed with the same code the writer
uses (``row_hash`` == ``Event.compute_hash``) and bulk-inserted into a SQLite file with
``executemany``. Floors printed next to each figure:

* sha256 floor: plain sha256 over the same canonical bytes (what hashing alone costs)
* read floor: the fast pass's own query over the same seq ranges, on the same number of
  connections and threads, each row fetched and unpacked the same way, and not hashed

`verify` is run twice: as one range (one connection, one thread) and in ranges verified at
once (the default: the cores here, at most 4), each beside the read floor of its own shape.
On a loaded machine compare the CPU figures and the ratio to the floor, not the wall clock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tether.audit.event import GENESIS_HASH, canonical_json, row_hash
from tether.audit.fastpass import _PG_BODY, default_workers, plan, read_answer, spawn_range
from tether.audit.rangescan import read_only
from tether.audit.trace import _tree_rows, build_trace
from tether.audit.verify import snapshot, verify_database
from tether.store.db import Database

sys.path.insert(0, str(Path(__file__).parent))
from _stats import emit

AGENTS = [f"spiffe://support.example/agent/{n}" for n in ("orchestrator", "refunder", "lookup", "notifier")]


def payload_for(i: int, rnd: random.Random) -> dict[str, object]:
    resources = ["crm.customers", "tickets.queue", "billing.invoices"]
    return {
        "action": "read",
        "resource": rnd.choice(resources),
        "outcome": rnd.choice(["allow", "allow", "allow", "deny"]),
        "policy_version": "sha256:" + "ab" * 32,
        "args_digest": "sha256:" + hashlib.sha256(str(i).encode()).hexdigest(),
        "reasons": [{"policy_id": "baseline-read", "message": "reads within the trust domain"}],
        "risk": {"calls_last_minute": i % 60, "first_use": False, "max_sensitivity_read": 1},
        "environment": "prod",
    }


def generate(db: Database, n: int, chain: str = "node-1", tree: int = 0) -> tuple[str, list[bytes]]:
    """Write ``n`` valid chained events; the first ``tree`` form one task tree. Returns the
    root task id and a sample of canonical bodies (for the sha256 floor)."""
    rnd = random.Random(1)
    raw = db.engine.raw_connection()
    cur = raw.cursor()
    pg = db.dialect == "postgresql"
    if not pg:
        cur.execute("PRAGMA synchronous=OFF")
    prev, ts = GENESIS_HASH, 1.7e9
    root = "tsk_root"
    tasks = [root]
    batch: list[tuple[object, ...]] = []
    bodies: list[bytes] = []
    sql = (
        "INSERT INTO audit_events (chain, seq, v, ts, type, task_id, root_task_id, parent_task_id, agent, "
        "delegator, decision_id, lease_id, trace_id, payload, prev_hash, hash) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    mark = "%s" if pg else "?"
    sql = sql.replace("?", mark)
    for seq in range(1, n + 1):
        ts += 0.001
        in_tree = seq <= tree
        if in_tree and (seq == 1 or seq % 50 == 0):  # a new sub-task every 50 events
            task = root if seq == 1 else f"tsk_{seq}"
            parent = None if seq == 1 else rnd.choice(tasks)
            if seq != 1:
                tasks.append(task)
            typ, payload = "task.opened", {"intent": "billing.refund", "scope": [], "depth": 0, "act": []}
        else:
            task = rnd.choice(tasks) if in_tree else f"tsk_other_{seq // 100}"
            parent = None
            typ, payload = "decision", payload_for(seq, rnd)
        root_id = root if in_tree else task
        agent = rnd.choice(AGENTS)
        text = canonical_json(payload)
        row = dict(
            chain=chain,
            seq=seq,
            ts=ts,
            type=typ,
            prev_hash=prev,
            payload_text=text,
            task_id=task,
            root_task_id=root_id,
            parent_task_id=parent,
            agent=agent,
            delegator="https://idp.example.com#alice@example.com",
            decision_id=f"dec_{seq}",
            lease_id=None,
            trace_id=None,
            v=1,
        )
        h = row_hash(**row)  # type: ignore[arg-type]
        if len(bodies) < 100_000:
            bodies.append(json.dumps({"x": text, "p": prev, "s": seq, "a": agent}).encode())
        batch.append(
            (
                chain,
                seq,
                1,
                ts,
                typ,
                task,
                root_id,
                parent,
                agent,
                row["delegator"],
                row["decision_id"],
                None,
                None,
                text,
                prev,
                h,
            )
        )
        prev = h
        if len(batch) == 50_000:
            cur.executemany(sql, batch)
            batch.clear()
    if batch:
        cur.executemany(sql, batch)
    cur.execute(
        "INSERT INTO audit_chains (chain, head_seq, head_hash, updated_at) VALUES (?,?,?,?)".replace(
            "?", mark
        ),
        (chain, n, prev, ts),
    )
    raw.commit()
    if pg:
        cur.execute("ANALYZE audit_events")
        raw.commit()
    else:
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    return root, bodies


def read_floor(db: Database, chain: str, workers: int) -> tuple[float, float]:
    """(wall, CPU seconds, this process and its range processes) of reading the rows the
    fast pass reads, the way it reads them: range 0 here, the others in processes of their own.
    PostgreSQL (one range): the server assembling the same bodies in seq order, not hashing."""
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    if db.dialect == "postgresql":
        with snapshot(db) as conn:
            n = conn.exec_driver_sql(
                f"SELECT count({_PG_BODY}) FROM (SELECT * FROM audit_events "
                "WHERE chain = %(c)s ORDER BY seq) AS r",
                {"c": chain},
            ).scalar()
        assert n, n
        return time.perf_counter() - t0, time.process_time() - c0
    with snapshot(db) as conn:
        conn.exec_driver_sql("SELECT 1")
        top = conn.exec_driver_sql("SELECT max(seq) FROM audit_events WHERE chain = ?", (chain,)).scalar()
        ranges = plan(int(top), workers) if workers > 1 else plan(0, 1)
        path = str(Path(conn.engine.url.database or "").resolve())
        procs = [spawn_range(path, chain, lo, hi, {}, floor=True) for lo, hi in ranges[1:]]
        n = read_only(conn.connection.driver_connection.cursor(), chain, *ranges[0])  # type: ignore[union-attr]
        n += sum(int(json.loads(read_answer(p))) for p in procs)
    assert n == top, (n, top)
    return time.perf_counter() - t0, time.process_time() - c0 + _children_cpu() - k0


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--tree", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="verify runs (median reported)")
    ap.add_argument("--trace-runs", type=int, default=15)
    ap.add_argument("--store-url", help="an empty PostgreSQL database to fill (default: a SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        db = Database(args.store_url or f"sqlite:///{Path(d) / 'bench.db'}")
        db.migrate()
        t0 = time.perf_counter()
        root, bodies = generate(db, args.events, tree=args.tree)
        size = Path(d, "bench.db").stat().st_size / 1e6 if db.dialect == "sqlite" else 0
        print(
            f"generated {args.events:,} chained events in {time.perf_counter() - t0:.1f}s "
            f"({db.dialect}{f', db {size:.0f} MB' if size else ''})"
        )

        rates: dict[int, float] = {}
        floors: dict[int, float] = {}
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for workers in sorted({1, default_workers()}):
            runs, cpu = [], []
            for _ in range(args.runs):
                t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
                report = verify_database(db, workers=workers)
                runs.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0 + _children_cpu() - k0)  # range processes too
                assert report.ok and report.events == args.events, report.to_dict()
            reads = [
                read_floor(db, "node-1", workers if db.dialect == "sqlite" else 1) for _ in range(args.runs)
            ]
            med, rmed = statistics.median(runs), statistics.median(r[0] for r in reads)
            rcpu = statistics.median(r[1] for r in reads)
            rates[workers], floors[workers] = args.events / med, args.events / rmed
            print(
                f"verify, {workers} range(s): median {med:.2f}s over {args.runs} runs → "
                f"{args.events / med:,.0f} events/s (min {min(runs):.2f}s, max {max(runs):.2f}s; CPU time "
                f"{statistics.median(cpu):.2f}s → {args.events / statistics.median(cpu):,.0f} events per "
                f"CPU-second)\n  read floor (same query, same ranges, no hashing): {rmed:.2f}s → "
                f"{args.events / rmed:,.0f} rows/s (CPU {rcpu:.2f}s → {args.events / rcpu:,.0f} rows per "
                f"CPU-second); verify = {rmed / med:.2f}× the floor's rate"
            )
        workers = default_workers()
        t0 = time.perf_counter()
        for b in bodies:
            hashlib.sha256(b).hexdigest()
        per = (time.perf_counter() - t0) / len(bodies)
        print(f"  sha256 floor (~same bytes): {per * 1e6:.2f} µs/event → {1 / per:,.0f} events/s")
        rate, read = rates[workers], floors[workers]
        emit(
            "verify",
            f"`tether audit verify`, {args.events:,} events",
            unit="events/s",
            p50=rate,
            floor_p50=1 / per,
            floor=f"sha256 alone {1 / per:,.0f}/s; row read {read:,.0f}/s ({workers} range(s))",
            ratio=f"{rate * per:.2f}× sha256",
            target="≥ 300k events/s",
            met=rate >= 300_000,
        )

        times, tcpu = [], []
        tr = None
        for _ in range(args.trace_runs):
            # The previous trace (~170k objects) is freed here, not inside the timed build.
            del tr
            t0, c0 = time.perf_counter(), time.process_time()
            with db.read() as conn:
                tr = build_trace(conn, root)
            times.append(time.perf_counter() - t0)
            tcpu.append(time.process_time() - c0)
        assert tr.events == args.tree, tr.events
        shown = []  # what `tether audit trace --json` does with it: the trace as plain data
        for _ in range(args.trace_runs):
            c0 = time.process_time()
            with db.read() as conn:
                build_trace(conn, root).to_dict()
            shown.append(time.process_time() - c0)
        fetches, fcpu = [], []
        for _ in range(args.trace_runs):  # fetch-only floor: the trace's own query, nothing else
            with db.read() as conn:
                t0, c0 = time.perf_counter(), time.process_time()
                n = sum(len(rows) for rows in _tree_rows(conn, root))
                fetches.append(time.perf_counter() - t0)
                fcpu.append(time.process_time() - c0)
        fetch = statistics.median(fetches)
        print(
            f"trace of a {args.tree:,}-event tree ({len(tr.root.children)} direct sub-tasks): "
            f"median {statistics.median(times) * 1e3:.0f} ms, p99 {pct(times, 99) * 1e3:.0f} ms "
            f"over {args.trace_runs} runs (row fetch floor {fetch * 1e3:.0f} ms for {n:,} rows, same query; "
            f"CPU time median {statistics.median(tcpu) * 1e3:.0f} ms, the fetch's "
            f"{statistics.median(fcpu) * 1e3:.0f} ms; with .to_dict() "
            f"{statistics.median(shown) * 1e3:.0f} ms)"
        )
        t50, t99 = statistics.median(times) * 1e3, pct(times, 99) * 1e3
        emit(
            "trace",
            f"`tether audit trace` of a {args.tree:,}-event tree",
            unit="ms",
            p50=t50,
            p99=t99,
            floor_p50=fetch * 1e3,
            floor=f"row fetch {fetch * 1e3:.0f} ms",
            ratio=f"{t50 / (fetch * 1e3):.1f}× fetch",
            target="≤ 100 ms",
            met=t50 <= 100,
        )
        db.dispose()


if __name__ == "__main__":
    main()

"""Revocation under load: close acknowledged → every role of the tree is unusable.

Against a throwaway PostgreSQL server (tests/_pg.py), with the connector's admin a
NOSUPERUSER role (CREATEROLE, INHERIT) as docs/credentials.md prescribes:

1. **bound** — with ``--live`` live leases and a background load of ``--rate`` mints/s
   (each background task is opened, mints ``--mints-per-task`` roles and is closed, so
   cleanup runs too) on ONE replica: for ``--n`` task trees (a root and a delegated child, one role each, one
   session open), the time from ``close_task`` returning to *every role of the tree has
   rolcanlogin = false and no row in pg_stat_activity*, polled on a superuser connection;
2. **drain** — every live lease revoked at once with the cleanup stopped, then the time
   for ``--replicas`` replicas' revokers to take the backlog to zero;
3. **concurrency** — ``--concurrency`` allowed calls at once (spread over three replicas,
   ``--rounds`` times) and the same number of raw connector mints at once: how many
   came back ``connector_failed``.

    python bench/bench_revocation.py [--live 1000] [--n 200] [--rate 35 --load-workers 8
        --mints-per-task 3] [--drain 1000]
        [--replicas 3] [--concurrency 40 --rounds 5] [--parts bound,drain,concurrency]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "credentials"))
import psycopg
from _credhelp import DATASETS, add_analytics

import _pg
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.config import load_settings
from tether.credentials import leases as ls
from tether.errors import TetherError
from tether.model import Grant, Workload
from tether.runtime import Runtime, init_state_dir
from tether.testing import TestTrustDomain, make_settings

ROOT = Workload("spiffe://support.example/analyst", "support.example", "bench")
CHILD = Workload("spiffe://support.example/helper", "support.example", "bench")
READ = AuthorizeRequest("read", "analytics.orders")
GRANTS = (Grant("read", "analytics.orders"),)


def _stats(name: str, xs: list[float]) -> None:
    s = sorted(xs)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    print(
        f"  {name:52} n={len(s):5}  p50 {statistics.median(s) * 1000:8.1f} ms  "
        f"p99 {p99 * 1000:8.1f} ms  max {s[-1] * 1000:8.1f} ms"
    )


def _open(rt: Runtime, ttl: int = 3600) -> tuple[str, str]:
    o = rt.broker.open_task(ROOT, OpenTaskRequest("support.triage", "bench", GRANTS, ttl))
    return o.task.id, o.token


def _mint(rt: Runtime, token: str) -> dict:
    cred = rt.broker.authorize(token, READ).credential
    if cred is None:
        raise RuntimeError("mint denied")
    return dict(cred.for_agent or {})


def _tree(rt: Runtime) -> tuple[str, list[dict]]:
    """A root task and a delegated child, one role each."""
    root_id, root_tok = _open(rt)
    creds = [_mint(rt, root_tok)]
    claims = rt.broker.verify_token(root_tok)
    d = rt.broker.delegate(claims, root_id, CHILD.spiffe_id, GRANTS, 120)
    child = rt.broker.open_task(CHILD, OpenTaskRequest(None, "", None, 120, delegation=d.id))
    creds.append(_mint(rt, child.token))
    return root_id, creds


class _TimedLock:
    """Stands in for the audit chain's lock to measure how long each unit holds it: when the
    lock is busy nearly all the time, it (not the generator) caps one replica's rate."""

    def __init__(self, inner: threading.Lock) -> None:
        self.inner, self.held, self.since = inner, [], 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        ok = self.inner.acquire(blocking, timeout)
        if ok:
            self.since = time.perf_counter()
        return ok

    def release(self) -> None:
        self.held.append(time.perf_counter() - self.since)
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Load:
    """Open-loop background load: mint ``k`` is due at ``start + k / rate`` whatever earlier
    mints took, run by the first free one of ``workers`` threads. (A fixed pair of threads
    each waiting for its own open → mint → close caps the rate at 2 / latency: on a loaded
    machine that, not the broker, was the limit.) Each iteration's steps are timed, so the
    report can say whether the broker or the generator fell short."""

    def __init__(
        self, rt: Runtime, rate: float, workers: int, stop: threading.Event, bg: dict, per_task: int = 1
    ) -> None:
        self.rt, self.rate, self.stop, self.bg, self.per_task = rt, rate, stop, bg, per_task
        self.lock = threading.Lock()
        self.k = 0
        self.t0 = 0.0
        self.busy = self.max_busy = 0
        self.steps: dict[str, list[float]] = {"open": [], "mint": [], "close": []}
        self.late: list[float] = []
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def start(self) -> None:
        self.lock_timer = _TimedLock(self.rt.audit._lock)
        self.rt.audit._lock = self.lock_timer  # type: ignore[assignment]
        self.t0 = time.monotonic()
        for th in self.threads:
            th.start()

    def join(self) -> None:
        for th in self.threads:
            th.join(30)
        self.rt.audit._lock = self.lock_timer.inner

    def _work(self) -> None:
        rt = self.rt
        while not self.stop.is_set():
            with self.lock:
                due = self.t0 + self.k * self.per_task / self.rate  # `rate` counts mints
                self.k += 1
            delay = due - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            with self.lock:
                self.late.append(max(0.0, -delay))
                self.busy += 1
                self.max_busy = max(self.max_busy, self.busy)
            try:
                t = time.perf_counter()
                task_id, tok = _open(rt)
                t1 = time.perf_counter()
                for _ in range(self.per_task):
                    _mint(rt, tok)
                t2 = time.perf_counter()
                rt.broker.close_task(task_id, by="bench")
                t3 = time.perf_counter()
                with self.lock:
                    self.bg["mints"] += self.per_task
                    for k, v in (("open", t1 - t), ("mint", t2 - t1), ("close", t3 - t2)):
                        self.steps[k].append(v)
            except Exception as exc:  # counted: a busy store under load is a finding, not a crash
                with self.lock:
                    self.bg["errors"] = self.bg.get("errors", 0) + 1
                    self.bg["last_error"] = str(exc)[:120]
            finally:
                with self.lock:
                    self.busy -= 1

    def report(self, elapsed: float) -> None:
        for k, xs in self.steps.items():
            if xs:
                _stats(f"background {k}", xs)
        if self.late:
            _stats("background start behind schedule", self.late)
        held = self.lock_timer.held
        if held:
            _stats("audit lock held per unit (all units)", held)
            busy = sum(held) / elapsed
            print(
                f"  audit lock busy {busy * 100:.0f}% of the run ({len(held) / elapsed:.0f} units/s; "
                f"at 100% it would allow ~{len(held) / elapsed / max(busy, 1e-9):.0f} units/s, "
                f"2 + --mints-per-task per background task)"
            )
        achieved = self.bg["mints"] / elapsed
        if achieved < 0.9 * self.rate:
            who = (
                "the broker (every worker was busy: more workers would only queue for its audit lock)"
                if self.max_busy >= len(self.threads)
                else "the generator (workers were idle)"
            )
            print(f"  ! background load {achieved:.1f}/s is below the {self.rate:g}/s target; limit: {who}")
        if self.bg.get("errors"):
            print(f"  background errors: {self.bg['errors']} (last: {self.bg['last_error']})")


def bench_bound(
    server, rt: Runtime, live: int, n: int, rate: float, workers: int = 8, per_task: int = 3
) -> None:
    print("\n1. close acknowledged → every role of the tree refuses login and has no session")
    t0 = time.monotonic()
    for _ in range(live):
        _mint(rt, _open(rt)[1])
    with rt.db.read() as conn:
        states = ls.count_by_state(conn)
    print(f"  {states.get('active', 0)} live leases (filled in {time.monotonic() - t0:.1f} s)")
    stop = threading.Event()
    bg: dict = {"mints": 0}
    load = _Load(rt, rate, workers, stop, bg, per_task)
    started = time.monotonic()
    load.start()
    samples: list[float] = []
    probe = server.connect()
    try:
        while len(samples) < n:
            try:
                task_id, creds = _tree(rt)
            except Exception as exc:
                bg["sample_errors"] = bg.get("sample_errors", 0) + 1
                bg["last_error"] = str(exc)[:120]
                continue
            roles = [c["username"] for c in creds]
            session = psycopg.connect(creds[0]["dsn"], autocommit=True)
            try:
                rt.broker.close_task(task_id, by="bench")
            except Exception as exc:  # not acknowledged: not a sample (the reaper ends it later)
                bg["close_errors"] = bg.get("close_errors", 0) + 1
                bg["last_error"] = str(exc)[:120]
                session.close()
                continue
            acked = time.perf_counter()
            while True:
                row = probe.execute(
                    "SELECT coalesce(bool_or(rolcanlogin), false), "
                    "(SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s)) "
                    "FROM pg_roles WHERE rolname = ANY(%s)",
                    (roles, roles),
                ).fetchone()
                if row == (False, 0):
                    break
                if time.perf_counter() - acked > 30:
                    raise RuntimeError(f"roles {roles} still usable after 30 s: {row}")
            samples.append(time.perf_counter() - acked)
            session.close()
    finally:
        stop.set()
        load.join()
        probe.close()
    elapsed = time.monotonic() - started
    total_mints = bg["mints"] + 2 * n
    print(
        f"  background: {bg['mints']} mints in tasks of {per_task} ({bg['mints'] / elapsed:.1f} mints/s, "
        f"{bg['mints'] / per_task / elapsed:.1f} tasks opened+closed/s, target {rate:g} mints/s, {workers} "
        f"workers); all mints {total_mints / elapsed:.1f}/s over {elapsed:.1f} s"
    )
    load.report(elapsed)
    _stats("close → all roles of the tree cut", samples)


def bench_drain(rts: list[Runtime], replicas: int, size: int) -> None:
    """``size`` fresh leases, their tasks closed with every revoker stopped (the cut still
    runs), then the time for ``replicas`` revokers to take the backlog to zero."""
    a = rts[0]
    for rt in rts:
        rt.credentials.reaper.stop()
    tasks = []
    for _ in range(size):
        task_id, tok = _open(a)
        _mint(a, tok)
        tasks.append(task_id)
    for task_id in tasks:  # one close each: a kill switch over thousands is one long transaction
        a.broker.close_task(task_id, by="bench")
    with a.db.read() as conn:
        backlog = ls.count_by_state(conn).get("revoking", 0)
    t0 = time.monotonic()
    with ThreadPoolExecutor(replicas) as pool:
        while True:
            list(pool.map(lambda rt: rt.credentials.reaper.process_revocations(), rts[:replicas]))
            with a.db.read() as conn:
                left = ls.count_by_state(conn).get("revoking", 0)
            if not left:
                break
    took = time.monotonic() - t0
    print(
        f"\n2. drain: {backlog} revoking leases → 0 with {replicas} replica(s): {took:.2f} s "
        f"({backlog / took:.0f} leases/s)"
    )
    for rt in rts:
        rt.credentials.reaper.start()


def bench_concurrency(rts: list[Runtime], width: int, rounds: int) -> None:
    failed = ok = 0
    other: dict[str, int] = {}
    for _ in range(rounds):
        tokens = [(rts[i % len(rts)], _open(rts[i % len(rts)])[1]) for i in range(width)]
        gate = threading.Barrier(width)

        def call(pair: tuple[Runtime, str], gate: threading.Barrier = gate) -> str:
            rt, tok = pair
            gate.wait(30)
            try:
                d = rt.broker.authorize(tok, READ)
            except TetherError as exc:  # e.g. the audit chain busy past the store bound
                return f"raised {exc.code}"
            return "ok" if d.credential else str(d.decision.code)

        with ThreadPoolExecutor(width) as pool:
            outs = list(pool.map(call, tokens))
        ok += outs.count("ok")
        failed += outs.count("connector_failed")
        for o in outs:
            if o not in ("ok", "connector_failed"):
                other[o] = other.get(o, 0) + 1
    print(
        f"\n3. {width}-way allowed calls over {len(rts)} replicas × {rounds} rounds: "
        f"{ok} minted, {failed} connector_failed, other: {other or 'none'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live", type=int, default=1000)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rate", type=float, default=35.0)
    ap.add_argument("--load-workers", type=int, default=8, help="threads sharing the --rate load")
    ap.add_argument(
        "--mints-per-task",
        type=int,
        default=3,
        help="background tasks each mint this many roles before closing (an agent's task "
        "makes several calls); every role is still cut and dropped",
    )
    ap.add_argument("--store", choices=["sqlite", "postgresql"], default="postgresql")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--drain", type=int, default=1000, help="backlog size for the drain")
    ap.add_argument("--parts", default="bound,drain,concurrency")
    args = ap.parse_args()
    domain = TestTrustDomain("support.example")
    with tempfile.TemporaryDirectory() as d, _pg.running_server(port=5544) as server:
        db = server.create_database("bench_target")
        with server.connect() as c:
            c.execute("CREATE ROLE bench_admin LOGIN CREATEROLE INHERIT NOSUPERUSER PASSWORD 'bench'")
        with server.connect(db) as c:
            c.execute("CREATE TABLE orders (id int primary key)")
            c.execute("ALTER TABLE orders OWNER TO bench_admin")
        store = server.url(server.create_database("bench_store")) if args.store == "postgresql" else None
        state = Path(d) / "state"
        init_state_dir(state)
        add_analytics(state, DATASETS)
        admin = server.url(db, user="bench_admin", password="bench")
        settings = make_settings(
            state,
            store_url=store,
            domain=domain,
            overrides={"environment": "prod", "tasks": {"max_ttl_seconds": 7200}},
            config_extra=f'\n[credentials.postgres]\nanalytics = "{admin}"\n',
        )
        rts = [Runtime.start(settings)]
        try:
            if "bound" in args.parts:
                bench_bound(
                    server, rts[0], args.live, args.n, args.rate, args.load_workers, args.mints_per_task
                )
            if args.store == "postgresql":
                for i in range(1, args.replicas):
                    s = load_settings(
                        state,
                        environ={},
                        overrides={
                            "store": store,
                            "environment": "prod",
                            "identity": {
                                "dpop": "optional",
                                "workload_socket": "",
                            },  # one Workload API per state dir
                            "node_id": f"node-{i + 1}",
                        },
                    )
                    rts.append(Runtime.start(s))
            if "drain" in args.parts:
                bench_drain(rts, 1, args.drain)
                if len(rts) > 1:
                    bench_drain(rts, len(rts), args.drain)
            if "concurrency" in args.parts:
                bench_concurrency(rts, args.concurrency, args.rounds)
            pool = rts[0].credentials.service.connectors["postgres"].pool
            print(f"\n   admin connections opened by replica 1: {pool.opened}")
        finally:
            for rt in rts:
                rt.close()


if __name__ == "__main__":
    main()

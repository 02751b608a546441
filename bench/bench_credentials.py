"""Credentials: mint cost, revocation bound at the middleware, and close → DROP ROLE.

Each figure is printed next to its raw floor measured in the same run:

    authorize + jwt credential       vs  authorize on a resource without a connector
    sign the access token alone      (the jwt connector's own work)
    close → middleware rejects       in-process follower long-polling the feed; the
                                     floor is close_task alone (the commit that writes it)
    authorize + postgres role        vs  raw CREATE ROLE + GRANT on one connection
    close → role gone (DROP ROLE)    vs  raw terminate + REASSIGN/DROP OWNED + DROP ROLE

The PostgreSQL part starts a throwaway server (tests/_pg.py); it is skipped when the
server binaries are missing.

    python bench/bench_credentials.py [--n 300] [--rounds 40] [--store sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import psycopg
from _stats import measure, table
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.credentials.middleware import (
    FeedSource,
    JwksKeys,
    RevocationFollower,
    TetherAuthMiddleware,
)
from tether.identity.jwt import sign_jwt
from tether.model import Grant, Workload
from tether.runtime import Runtime, init_state_dir
from tether.testing import TestTrustDomain, make_settings

AGENT = Workload("spiffe://support.example/bench", "support.example", "bench")


def _open(rt: Runtime, grants: tuple[Grant, ...], ttl: int = 3600) -> tuple[str, str]:
    o = rt.broker.open_task(AGENT, OpenTaskRequest("support.triage", "bench", grants, ttl))
    return o.task.id, o.token


def _poll(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")


def bench_jwt(rt: Runtime, n: int, rounds: int) -> None:
    _, tok = _open(rt, (Grant("read", "tickets.queue"), Grant("read", "crm.customers")))
    crm = rt.catalog.resources["crm.customers"]
    # Floor: the same authorize on a resource whose service has no connector.
    object.__setattr__(crm, "connector", None)
    floor = measure(lambda: rt.broker.authorize(tok, AuthorizeRequest("read", "crm.customers")), n)
    with_cred = measure(lambda: rt.broker.authorize(tok, AuthorizeRequest("read", "tickets.queue")), n)
    key = rt.keys.signing_key()
    claims = {
        "iss": "x",
        "aud": "tickets",
        "sub": AGENT.spiffe_id,
        "exp": int(time.time()) + 300,
        "jti": "lse_x",
        "txn": "tsk_x",
        "scope": "read@tickets.queue",
    }
    sign = measure(lambda: sign_jwt(claims, key.private_key, kid=key.kid, typ="at+jwt"), n)
    table(
        "mint (jwt connector)",
        [
            ("authorize, no connector (floor)", floor),
            ("authorize + jwt credential (lease + event + sign)", with_cred),
            ("sign_jwt alone", sign),
        ],
    )

    # Revocation bound at the middleware: close → first rejected request.
    follower = RevocationFollower(FeedSource(rt.credentials.feed), wait=5.0).start()
    _poll(follower.fresh)
    app = TetherAuthMiddleware(
        Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))]),
        audience="tickets",
        issuer=rt.settings.broker_issuer,
        keys=JwksKeys(rt.keys.jwks),
        follower=follower,
    )
    svc = TestClient(app)
    bound, close_only, fed = [], [], []
    for _ in range(rounds):
        task_id, tok = _open(rt, (Grant("read", "tickets.queue"),))
        cred = rt.broker.authorize(tok, AuthorizeRequest("read", "tickets.queue")).credential
        token = cred.for_agent["token"]
        h = {"Authorization": f"Bearer {token}"}
        assert svc.get("/", headers=h).status_code == 200
        t0 = time.perf_counter_ns()
        rt.broker.close_task(task_id, by="bench")
        close_only.append((time.perf_counter_ns() - t0) / 1000)
        while not follower.is_revoked(None, task_id):
            time.sleep(0.0001)
        fed.append((time.perf_counter_ns() - t0) / 1000)
        while svc.get("/", headers=h).status_code != 401:
            pass
        bound.append((time.perf_counter_ns() - t0) / 1000)
    follower.stop()
    table(
        "revocation bound at the middleware (in-process feed follower)",
        [
            ("close_task alone (floor)", close_only),
            ("close → follower holds the revocation", fed),
            ("close → middleware rejects (401, one more request)", bound),
        ],
    )


def bench_postgres(tmp: Path, store: str | None, domain: TestTrustDomain, rounds: int) -> None:
    try:
        import _pg  # the test suite's throwaway server
    except ImportError:
        print("\npostgres: tests/_pg.py not importable; skipped")
        return
    try:
        _pg.find_bindir()
    except _pg.PgUnavailable as exc:
        print(f"\npostgres: {exc}; skipped")
        return
    with _pg.running_server() as server:
        db = server.create_database("bench_target")
        with server.connect(db) as c:
            c.execute("CREATE TABLE orders (id int primary key)")
            # The connector's admin is NOSUPERUSER, as docs/credentials.md prescribes.
            c.execute("CREATE ROLE bench_admin LOGIN CREATEROLE INHERIT NOSUPERUSER PASSWORD 'bench'")
            c.execute("ALTER TABLE orders OWNER TO bench_admin")
        store_url = server.url(server.create_database("bench_store")) if store == "postgresql" else None
        state = tmp / "pgstate"
        init_state_dir(state)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "credentials"))
        from _credhelp import DATASETS, add_analytics

        add_analytics(state, DATASETS)
        settings = make_settings(
            state,
            store_url=store_url,
            domain=domain,
            overrides={"environment": "prod"},
            config_extra=(
                "\n[credentials.postgres]\n"
                f'analytics = "{server.url(db, user="bench_admin", password="bench")}"\n'
            ),
        )
        rt = Runtime.start(settings)
        try:
            mint, close_drop = [], []
            for _ in range(rounds):
                task_id, tok = _open(rt, (Grant("read", "analytics.orders"),))
                t0 = time.perf_counter_ns()
                cred = rt.broker.authorize(tok, AuthorizeRequest("read", "analytics.orders")).credential
                mint.append((time.perf_counter_ns() - t0) / 1000)
                role = cred.for_agent["username"]
                with server.connect() as c:
                    t0 = time.perf_counter_ns()
                    rt.broker.close_task(task_id, by="bench")
                    _poll(
                        lambda c=c, role=role: (
                            c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
                        )
                    )
                    close_drop.append((time.perf_counter_ns() - t0) / 1000)
            raw_create, raw_drop = [], []
            with psycopg.connect(server.conninfo(db), autocommit=True) as c:
                for i in range(rounds):
                    name = f"bench_raw_{i}"
                    t0 = time.perf_counter_ns()
                    with c.transaction():
                        c.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'x' VALID UNTIL 'infinity'")
                        c.execute(f"GRANT SELECT ON TABLE public.orders TO {name}")
                    raw_create.append((time.perf_counter_ns() - t0) / 1000)
                    t0 = time.perf_counter_ns()
                    c.execute(f"ALTER ROLE {name} NOLOGIN")
                    c.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
                    )
                    with c.transaction():
                        c.execute(f"REASSIGN OWNED BY {name} TO CURRENT_USER")
                        c.execute(f"DROP OWNED BY {name}")
                        c.execute(f"DROP ROLE {name}")
                    raw_drop.append((time.perf_counter_ns() - t0) / 1000)
            table(
                f"postgres connector (store: {rt.db.dialect})",
                [
                    ("raw CREATE ROLE + GRANT, open connection (floor)", raw_create),
                    ("authorize + postgres role (connect, mint, lease, event)", mint),
                    ("raw NOLOGIN + terminate + DROP OWNED + DROP ROLE (floor)", raw_drop),
                    ("close_task → role gone from pg_roles", close_drop),
                ],
            )
        finally:
            rt.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()
    domain = TestTrustDomain("support.example")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        settings = make_settings(tmp / "state", domain=domain, overrides={"environment": "prod"})
        rt = Runtime.start(settings)
        try:
            bench_jwt(rt, args.n, args.rounds)
        finally:
            rt.close()
        bench_postgres(tmp, args.store, domain, args.rounds)


if __name__ == "__main__":
    main()

"""In-process `Broker.authorize`, allow path with its audit commit, against its floors.

An agent sends the same task token on every action, and the broker remembers the tokens
it verified (`tether.tokens`): the main rows measure that repeat; the "not seen before"
row pays the full parse and ECDSA verify on every call.

Floors measured in the same run: ES256 verification of the task token (cryptography),
a raw Cedar decision with cached handles (cedarpy), and one audit-sized INSERT +
COMMIT on the same store. Run: `python bench/bench_authorize.py [--store URL] [-n N]`.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import cedarpy

sys.path.insert(0, str(Path(__file__).parent))
from _stats import emit, measure, measure_cpu, measure_pair, summary, table

from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.identity.jwt import sign_jwt
from tether.model import Grant, Workload
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", help="store URL (default: SQLite in a temp dir)")
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument(
        "--shadow", action="store_true", help="evaluate a copy of the policy set in shadow mode beside it"
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    domain = TestTrustDomain("support.example")
    settings = make_settings(
        tmp / "state",
        store_url=args.store,
        domain=domain,
        overrides={"environment": "prod", "identity": {"dpop": "optional"}},
    )
    # The shipped burst rule (> 120 calls a minute) would turn a long run into denies;
    # lift it so the allow path is what gets measured.
    taint = settings.policy_path / "20-taint.cedar"
    taint.write_text(taint.read_text().replace("> 120", "> 100000000"))
    rt = Runtime.start(settings)
    if args.shadow:  # the same policies: the cost of shadow mode, never a divergence event
        shadow_dir = tmp / "shadow"
        shutil.copytree(settings.policy_path, shadow_dir)
        rt.engine.load_shadow(shadow_dir)
    broker = rt.broker
    wl = Workload(domain.spiffe_id("bench"), domain.name, "jwt-svid")
    opened = broker.open_task(
        wl, OpenTaskRequest("support.triage", "bench", (Grant("read", "tickets.queue"),), 3600)
    )
    token = opened.token
    req = AuthorizeRequest("read", "tickets.queue", {"ticket": "T-1"})
    assert broker.authorize(token, req).decision.allowed

    # Floors -----------------------------------------------------------------------------
    def verify() -> None:  # the full verify, as for a token not seen before
        broker.tokens._verified.clear()
        broker.tokens.verify(token, now=broker.clock())

    # The Cedar floor is the very call the engine makes (request, policy set, entities with
    # this call's delta, schema), captured once and replayed on the cached handles.
    from tether.policy import engine as engine_module

    captured: list[tuple[object, ...]] = []
    evaluate = engine_module._evaluate

    def capture(*a: object) -> object:
        captured.append(a)
        return evaluate(*a)  # type: ignore[arg-type]

    engine_module._evaluate = capture  # type: ignore[assignment]
    broker.authorize(token, req)
    engine_module._evaluate = evaluate
    request, policy_set, entities, schema = captured[0]
    cedar = lambda: cedarpy.is_authorized(request, policy_set, entities, schema)  # noqa: E731
    assert cedar().allowed

    key = rt.keys.signing_key()
    claims = {"iss": "x", "aud": "tickets", "sub": wl.spiffe_id, "exp": 2**31, "jti": "lse_x"}
    sign = lambda: sign_jwt(claims, key.private_key, kid=key.kid, typ="at+jwt")  # noqa: E731
    commit: Callable[[], object] = lambda: None  # noqa: E731
    if rt.db.dialect == "sqlite":
        raw = sqlite3.connect(tmp / "raw.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, payload TEXT)")
        payload = "x" * 600

        def insert_commit() -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("INSERT INTO e (payload) VALUES (?)", (payload,))
            raw.execute("COMMIT")

        commit = insert_commit

    def floor() -> None:
        verify()
        cedar()
        commit()

    def floor_jwt() -> None:
        floor()
        sign()

    rows = [
        ("ES256 verify of the task token (floor)", measure(verify, args.n)),
        ("cedarpy.is_authorized, cached handles (floor)", measure(cedar, args.n)),
        ("ES256 sign of one access token (floor)", measure(sign, args.n)),
    ]
    if rt.db.dialect == "sqlite":
        rows.append(("sqlite INSERT + COMMIT, WAL (floor)", measure(commit, args.n)))
    # Each path interleaved with its floor call by call: both see the same machine load.
    with_cred, floor_cred = measure_pair(lambda: broker.authorize(token, req), floor_jwt, args.n)
    cpu_cred = measure_cpu(lambda: broker.authorize(token, req), args.n)
    cpu_floor_cred = measure_cpu(floor_jwt, args.n)
    hooks = list(broker.allow_hooks)
    broker.allow_hooks.clear()  # the same decision without minting: the core on its own
    bare, floor_bare = measure_pair(lambda: broker.authorize(token, req), floor, args.n)
    cpu_bare = measure_cpu(lambda: broker.authorize(token, req), args.n)
    cpu_floor = measure_cpu(floor, args.n)

    def first_sight() -> None:  # a token this broker has not verified before
        broker.tokens._verified.clear()
        broker.authorize(token, req)

    cold, floor_cold = measure_pair(first_sight, floor, args.n)
    broker.allow_hooks.extend(hooks)
    rows += [
        ("floor: verify + Cedar + INSERT/COMMIT", floor_bare),
        (f"Broker.authorize allow + audit, no credential ({rt.db.dialect})", bare),
        ("floor (again, beside the next row)", floor_cold),
        ("  … its token not seen before (full verify)", cold),
        ("floor: verify + Cedar + INSERT/COMMIT + sign", floor_cred),
        (f"Broker.authorize allow + jwt credential + audit ({rt.db.dialect})", with_cred),
    ]
    table(f"authorize hot path, n={args.n}", rows)
    table(
        "the same, CPU time of this process per call (not counting time waiting for a core)",
        [
            ("floor: verify + Cedar + INSERT/COMMIT", cpu_floor),
            ("Broker.authorize, no credential", cpu_bare),
            ("floor + sign", cpu_floor_cred),
            ("Broker.authorize, jwt credential", cpu_cred),
        ],
    )
    for key, label, fast, slow in (
        ("authorize_cpu", "CPU time: authorize, no credential", cpu_bare, cpu_floor),
        ("authorize_jwt_cpu", "CPU time: authorize, jwt credential", cpu_cred, cpu_floor_cred),
    ):
        (p50, p99), (f50, f99) = summary(fast), summary(slow)
        emit(
            key,
            label,
            unit="µs",
            p50=p50,
            p99=p99,
            floor_p50=f50,
            floor_p99=f99,
            floor=f"floor CPU time {f50:.0f} / {f99:.0f} µs",
            target="(wall-time targets above)",
            met=p50 <= 1.5 * f50,
        )
    (p50, p99), (f50, f99) = summary(bare), summary(floor_bare)
    emit(
        "authorize",
        f"`Broker.authorize` allow + audit, no credential ({rt.db.dialect})",
        unit="µs",
        p50=p50,
        p99=p99,
        floor_p50=f50,
        floor_p99=f99,
        floor=f"verify + cached Cedar + commit: {f50:.0f} / {f99:.0f} µs",
        target="≤ 1.5× p50, ≤ 2× p99",
        met=p50 <= 1.5 * f50 and p99 <= 2 * f99,
    )
    (p50, p99), (f50, f99) = summary(with_cred), summary(floor_cred)
    emit(
        "authorize_jwt",
        f"same, with a `jwt` credential ({rt.db.dialect})",
        unit="µs",
        p50=p50,
        p99=p99,
        floor_p50=f50,
        floor_p99=f99,
        floor=f"floor + one ES256 sign: {f50:.0f} / {f99:.0f} µs",
        target="≤ 1.5× p50",
        met=p50 <= 1.5 * f50,
    )
    rt.close()


if __name__ == "__main__":
    main()

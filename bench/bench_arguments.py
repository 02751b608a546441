"""Added latency of typed-argument canonicalization per call (median and p99, µs).

    canonicalize: one path              tether.arguments.canonicalize, one `path` argument
    canonicalize: 10-path list          a `paths` list of ten entries
    canonicalize: url + email           one URL (IDNA host) and one address
    resolve_symlinks: one path          the gateway's realpath step for a stdio upstream (I/O)
    engine.decide, untyped              the same call, the argument not declared
    engine.decide, typed path           declared: canonicalization + the Args entity in Cedar

The difference of the last two rows is what a typed argument adds to one decision.

    python bench/bench_arguments.py [iterations]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from _stats import measure_pair, table

from tether.arguments import canonicalize, parse_arg_specs, resolve_symlinks
from tether.catalog import parse_catalog
from tether.model import Outcome
from tether.policy import PolicyEngine, PolicyPrincipal, PolicyRequest, action_context
from tether.policy.context import request_context, risk_context, task_context

POLICY = """
@id("read")
permit (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"fs");
@id("public-only")
forbid (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"fs")
unless { context.args.paths.isEmpty() || context.args.under.contains("/data/public") };
"""


def main(n: int) -> None:
    specs = parse_arg_specs(
        {
            "path": {"type": "path", "roots": ["/data"]},
            "paths": {"type": "path", "roots": ["/data"]},
            "url": "url",
            "to": "email",
        },
        "bench",
    )
    one = {"path": "/data/public/reports/../2026/q3.txt"}
    many = {"paths": [f"/data/public/dir{i}/./file{i}.txt" for i in range(10)]}
    web = {"url": "https://Bücher.Example/a/%2e%2e/b?q=1", "to": "ann@Example.com"}
    noop = lambda: None  # noqa: E731 - the floor: the loop itself

    rows = []
    for name, args in (("one path", one), ("10-path list", many), ("url + email", web)):
        a, _ = measure_pair(lambda args=args: canonicalize(specs, args), noop, n)
        rows.append((f"canonicalize: {name}", a))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "public").mkdir(parents=True)
        (root / "public" / "f.txt").write_text("x")
        local = parse_arg_specs({"path": {"type": "path", "roots": [str(root)]}}, "bench")
        arg = {"path": f"{root}/public/./f.txt"}
        a, _ = measure_pair(lambda: resolve_symlinks(local, arg, os.path.realpath), noop, n)
        rows.append(("resolve_symlinks: one path (realpath I/O)", a))

    catalog = parse_catalog(
        {
            "intents": {"support.triage": ""},
            "services": [{"id": "fs", "sensitivity": 1, "environment": "prod"}],
            "tools": [
                {"id": "fs.untyped", "service": "fs"},
                {
                    "id": "fs.typed",
                    "service": "fs",
                    "arguments": {"path": {"type": "path", "roots": ["/data"]}},
                },
            ],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.cedar").write_text(POLICY)
        engine = PolicyEngine.from_paths(Path(tmp), catalog)
    principal = PolicyPrincipal("spiffe://bench.example/agent", "bench.example", "jwt-svid")
    ctx = action_context(
        task=task_context(id="t", intent="support.triage"),
        risk=risk_context(),
        request=request_context(method="tools/call", path="read"),
        environment="prod",
    )

    def req(rid: str) -> PolicyRequest:
        res = catalog.get(rid)
        assert res is not None
        return PolicyRequest(principal, "tool:call", res, ctx, one)

    untyped, typed = req("fs.untyped"), req("fs.typed")
    assert engine.decide(typed).outcome is Outcome.ALLOW and engine.decide(untyped).outcome is Outcome.ALLOW
    b, a = measure_pair(lambda: engine.decide(untyped), lambda: engine.decide(typed), n)
    rows += [("engine.decide, untyped argument", b), ("engine.decide, typed path argument", a)]
    table(f"typed arguments ({n} iterations each)", rows)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)

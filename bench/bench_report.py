"""`tether report`: time to compute the whole report over a store of N triage tasks.

Each task is opened, reads the CRM (a credential is minted), tries to email out (denied
by the taint rule) and is closed — about six audit events per task. The figure is one
full report (one snapshot: window queries, the audit chain walk, policy files, every
metric and the mapping's rules), next to the audit walk alone (`tether audit verify`'s
work), which it includes.

    python bench/bench_report.py [--tasks 300] [--runs 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stats import measure, table
from starlette.testclient import TestClient

from tether.audit.verify import verify_database
from tether.report.build import build_report, collect
from tether.report.mapping import load_mapping
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.store.db import Database
from tether.testing import TestTrustDomain, make_settings

SCOPE = [{"action": "read", "resource": "crm"}, {"action": "tool:call", "resource": "email.send"}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-bench-report-") as tmp:
        domain = TestTrustDomain("support.example")
        settings = make_settings(
            Path(tmp) / "state",
            domain=domain,
            overrides={"environment": "prod", "identity": {"dpop": "optional"}},
        )
        rt = Runtime.start(settings)
        rt.credentials.secrets.set("email", "Bearer bench")
        client = TestClient(create_app(rt))
        for _ in range(args.tasks):
            svid = domain.svid(domain.spiffe_id("orchestrator"), settings.broker_audience)
            body = {"intent": "support.triage", "description": "bench", "ttl_seconds": 300, "scope": SCOPE}
            task = client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {svid}"}).json()
            auth = {"Authorization": f"Bearer {task['task_token']}"}
            for action, resource in (("read", "crm.customers"), ("tool:call", "email.send")):
                client.post("/v1/authorize", json={"action": action, "resource": resource}, headers=auth)
            client.post(f"/v1/tasks/{task['task_id']}/close", headers=auth)
        rt.close()
        mapping = load_mapping()
        since = time.time() - 3600
        events = collect(settings, since=since).events
        db = Database(settings.store_url)

        def report() -> None:
            build_report(settings, collect(settings, since=since), mapping)

        rows = [
            (f"full report, {len(events)} events", measure(report, args.runs, warmup=2)),
            (
                "audit chain walk alone (included above)",
                measure(lambda: verify_database(db), args.runs, warmup=2),
            ),
        ]
        db.dispose()
        table(f"tether report over {args.tasks} tasks (SQLite)", rows)


if __name__ == "__main__":
    main()

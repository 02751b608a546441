"""The operator console: server time to render each page over a store of N tasks.

Each task is opened by an orchestrator, delegates to a reader that reads the CRM (a
credential), and a refund asks for an approval, so every page has rows to show. Times
are the whole in-process request (session check, store reads, template), without a
browser; the browser's load times are printed by tests/console/test_browser.py.

    python bench/bench_console.py [--tasks 100] [--runs 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))
from _stats import measure, table
from starlette.testclient import TestClient

from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import TestTrustDomain, make_settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-bench-console-") as tmp:
        domain = TestTrustDomain("support.example")
        settings = make_settings(
            Path(tmp) / "state",
            domain=domain,
            overrides={"environment": "prod", "identity": {"dpop": "optional"}},
        )
        rt = Runtime.start(settings)
        client = TestClient(create_app(rt))

        def svid(name: str) -> dict[str, str]:
            return {
                "Authorization": f"Bearer {domain.svid(domain.spiffe_id(name), settings.broker_audience)}"
            }

        root = approval = ""
        for i in range(args.tasks):
            scope = [{"action": "read", "resource": "crm"}]
            body = {"intent": "support.triage", "description": "bench", "ttl_seconds": 300, "scope": scope}
            task = client.post("/v1/tasks", json=body, headers=svid("orchestrator")).json()
            auth = {"Authorization": f"Bearer {task['task_token']}"}
            offer = client.post(
                f"/v1/tasks/{task['task_id']}/delegations",
                json={
                    "child": domain.spiffe_id("reader"),
                    "scope": [{"action": "read", "resource": "crm.customers"}],
                    "ttl_seconds": 60,
                },
                headers=auth,
            ).json()
            child = client.post(
                "/v1/tasks", json={"delegation": offer["delegation"]}, headers=svid("reader")
            ).json()
            client.post(
                "/v1/authorize",
                json={"action": "read", "resource": "crm.customers"},
                headers={"Authorization": f"Bearer {child['task_token']}"},
            )
            refund = client.post(
                "/v1/tasks",
                json={
                    "intent": "billing.refund",
                    "scope": [{"action": "tool:call", "resource": "billing.refund"}],
                },
                headers=svid("billing-bot"),
            ).json()
            d = client.post(
                "/v1/authorize",
                json={
                    "action": "tool:call",
                    "resource": "billing.refund",
                    "arguments": {"ticket_id": f"T-{i}"},
                },
                headers={"Authorization": f"Bearer {refund['task_token']}"},
            ).json()
            root, approval = task["task_id"], d["approval_id"]
        link = urlsplit(rt.console.operator_link(os.getuid()))
        client.get(f"{link.path}?{link.query}")
        pages = [
            ("tasks list", "/console/tasks"),
            ("task page (tree, leases, chain of autonomy)", f"/console/tasks/{root}"),
            ("approvals queue", "/console/approvals"),
            ("approval page", f"/console/approvals/{approval}"),
            ("decisions", "/console/decisions"),
            ("audit (search, checkpoints)", "/console/audit"),
        ]
        rows = []
        for name, path in pages:
            assert client.get(path).status_code == 200, path
            rows.append((name, measure(lambda p=path: client.get(p), args.runs, warmup=10)))
        rt.close()
        table(f"console pages over {args.tasks} task trees (SQLite, in-process)", rows)


if __name__ == "__main__":
    main()

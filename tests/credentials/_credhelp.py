"""Helpers for the credentials tests (bounded waits, PostgreSQL probes, catalog setup)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import yaml

ANALYTICS_POLICY = """
@id("analytics-read")
@reason("triage may read the analytics orders")
permit (principal, action in Tether::Action::"reads", resource in Tether::Service::"analytics")
when { context.task.intent == "support.triage" };
"""


def add_analytics(state_dir: Path, tables: dict[str, list[str]]) -> None:
    """Add an `analytics` service (postgres connector) with one dataset per entry."""
    path = state_dir / "catalog.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["services"].append(
        {
            "id": "analytics",
            "sensitivity": "internal",
            "environment": "prod",
            "egress": "internal",
            "owner": "team-data",
            "connector": "postgres",
            "options": {"tables": ["public.orders"]},
        }
    )
    for dataset, tbls in tables.items():
        doc["datasets"].append({"id": dataset, "service": "analytics", "options": {"tables": tbls}})
    path.write_text(yaml.safe_dump(doc))
    (state_dir / "policies" / "50-analytics.cedar").write_text(ANALYTICS_POLICY)


DATASETS = {
    "analytics.orders": ["public.orders"],
    "analytics.payroll": ["public.payroll"],
    "analytics.evil": ['public.orders"; DROP TABLE payroll; --'],
}


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def role_exists(pg_server: Any, role: str) -> bool:
    with pg_server.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def tether_roles(pg_server: Any) -> set[str]:
    with pg_server.connect() as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tether\\_l\\_%'").fetchall()
    return {r[0] for r in rows}


def connect_as(cred: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(cred["dsn"], connect_timeout=5, autocommit=True)


def replica_runtime(settings: Any, node_id: str) -> Any:
    """Another in-process replica of ``settings``' broker (same state dir and store)."""
    from tether.config import load_settings
    from tether.runtime import Runtime

    s = load_settings(
        settings.state_dir,
        environ={},
        overrides={
            "store": settings.store_url,
            "environment": "prod",
            "identity": {"dpop": "optional", "workload_socket": ""},  # one Workload API per state dir
            "node_id": node_id,
            # Up to 14 calls queue on one replica's audit chain here; on a loaded CI machine
            # that wait may pass the default 2 s store bound, which is not what these pin.
            "limits": {"store_timeout_ms": 30000},
        },
    )
    return Runtime.start(s)

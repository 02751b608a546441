"""Deployments that lack a mechanism show the matching controls as not met.

Each test runs a real broker (in process, on SQLite and on PostgreSQL) through the HTTP
API, then computes the report from its store and files as `tether report` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tether.errors import InvalidRequest
from tether.report.build import build_report, collect
from tether.runtime import Runtime, init_state_dir
from tether.server.app import create_app
from tether.store.db import Database
from tether.testing import TestTrustDomain, make_settings


@pytest.fixture
def deploy(tmp_path: Path, store_url: str, domain: TestTrustDomain) -> Iterator[Any]:
    """Start a prod broker with DPoP optional, minus the named policy files; (settings, client, runtime)."""
    runtimes: list[Runtime] = []

    def start(*, drop: tuple[str, ...] = (), **extra: Any) -> tuple[Any, TestClient, Runtime]:
        settings = make_settings(
            tmp_path / "state",
            store_url=store_url,
            domain=domain,
            overrides={"environment": "prod", "identity": {"dpop": "optional"}, **extra},
        )
        for name in drop:
            (settings.policy_path / name).unlink()
        rt = Runtime.start(settings)
        runtimes.append(rt)
        rt.credentials.secrets.set("email", "Bearer sk-test-email-upstream")
        return settings, TestClient(create_app(rt), raise_server_exceptions=False), rt

    yield start
    for rt in runtimes:
        rt.close()


def _flow(client: TestClient, domain: TestTrustDomain, settings: Any) -> list[str]:
    """Open a triage task (no DPoP proof), read the CRM, try to email out, close; the outcomes."""
    svid = domain.svid(domain.spiffe_id("orchestrator"), settings.broker_audience)
    scope = [{"action": "read", "resource": "crm"}, {"action": "tool:call", "resource": "email.send"}]
    body = {"intent": "support.triage", "description": "t", "ttl_seconds": 300, "scope": scope}
    opened = client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {svid}"})
    assert opened.status_code == 201, opened.text
    task = opened.json()
    auth = {"Authorization": f"Bearer {task['task_token']}"}
    outcomes = []
    for action, resource in (("read", "crm.customers"), ("tool:call", "email.send")):
        r = client.post("/v1/authorize", json={"action": action, "resource": resource}, headers=auth)
        outcomes.append(r.json()["decision"])
    assert client.post(f"/v1/tasks/{task['task_id']}/close", headers=auth).status_code == 200
    return outcomes


def _statuses(settings: Any) -> tuple[dict[str, str], dict[str, Any]]:
    report = build_report(settings, collect(settings, since=time.time() - 600))
    return {c["id"]: c["status"] for c in report["controls"]}, report["evidence"]


def test_dpop_off_shows_sender_constraint_controls_not_met(deploy: Any, domain: TestTrustDomain):
    """DPoP not required and no task bound: NHI4 not met, ASI03 and tenet 6 short of met."""
    settings, client, _ = deploy()
    _flow(client, domain, settings)
    statuses, ev = _statuses(settings)
    assert ev["dpop.required"]["value"] is False and ev["dpop.tasks_bound"]["value"] == 0
    assert statuses["NHI4:2025"] == "not met"
    assert statuses["ASI03"] != "met" and statuses["SP 800-207 tenet 6"] != "met"


def test_taint_rule_removed_shows_exfiltration_controls_not_met(deploy: Any, domain: TestTrustDomain):
    """Without the taint policy the email-out is allowed and ASI02 and MAESTRO L2 are not met."""
    settings, client, _ = deploy(drop=("20-taint.cedar",))
    assert _flow(client, domain, settings) == ["allow", "allow"]
    statuses, ev = _statuses(settings)
    assert ev["policy.taint_rule"]["value"] == 0 and ev["decisions.denied_by_taint"]["value"] == 0
    assert statuses["ASI02"] == "not met" and statuses["MAESTRO L2"] == "not met"
    assert statuses["SP 800-207 tenet 4"] != "met"


def test_taint_rule_present_denies_and_meets_asi02(deploy: Any, domain: TestTrustDomain):
    """The same flow with the shipped policies: the email-out is denied and ASI02 is met."""
    settings, client, _ = deploy()
    assert _flow(client, domain, settings) == ["allow", "deny"]
    statuses, ev = _statuses(settings)
    assert ev["decisions.denied_by_taint"]["value"] == 1 and statuses["ASI02"] == "met"


def test_renamed_taint_file_is_still_found_by_annotation(deploy: Any, domain: TestTrustDomain):
    """Rules are found by `@mechanism`, not by file name: a renamed file still counts."""
    settings, _, _ = deploy()
    src = settings.policy_path / "20-taint.cedar"
    src.rename(settings.policy_path / "99-anything.cedar")
    from tether.report.facts import policy_facts

    facts = policy_facts(settings.policy_path)
    assert facts.by_mechanism["taint"] == ("taint-no-external-egress",)


def test_store_without_events_is_refused(tmp_path: Path):
    """A store that holds no audit event yet gives a clear error, not an empty report."""
    state = tmp_path / "empty"
    init_state_dir(state)
    from tether.config import load_settings

    settings = load_settings(state, environ={})
    db = Database(settings.store_url)
    db.migrate()
    db.dispose()
    with pytest.raises(InvalidRequest) as exc:
        collect(settings, since=0)
    assert exc.value.code == "report_no_events"


def test_window_too_large_is_refused_not_loaded(deploy: Any, domain: TestTrustDomain, monkeypatch: Any):
    """Past the in-memory bound a report asks for a narrower window instead of exhausting memory."""
    from tether.report import facts

    settings, client, _ = deploy()
    _flow(client, domain, settings)
    monkeypatch.setattr(facts, "MAX_WINDOW_EVENTS", 3)
    with pytest.raises(InvalidRequest) as exc:
        collect(settings, since=time.time() - 600)
    assert exc.value.code == "report_window_too_large"


def test_store_rolled_back_behind_an_outside_checkpoint_fails_audit_controls(
    deploy: Any, domain: TestTrustDomain
):
    """A checkpoint kept in `audit.checkpoint_file` beyond the store's head: the chain does not verify."""
    from tether.audit.checkpoint import append_checkpoint_file, sign_checkpoint

    settings, client, rt = deploy(audit={"checkpoint_file": "checkpoints.jsonl"})
    _flow(client, domain, settings)
    seq, head = rt.audit.snapshot()
    # What the file would hold had the store gone on before an older copy was put back.
    append_checkpoint_file(
        settings.state_dir / "checkpoints.jsonl",
        sign_checkpoint(rt.keys, rt.audit.chain_id, seq + 3, head, time.time()),
    )
    statuses, ev = _statuses(settings)
    assert ev["audit.chain_ok"]["value"] is False
    assert ev["audit.breaks"]["detail"][0]["kind"] == "rolled_back"
    assert statuses["MEASURE 2.7"] == "not met" and statuses["ASI10"] == "not met"


def test_lease_left_live_after_its_task_shows_offboarding_not_met(deploy: Any, domain: TestTrustDomain):
    """A lease whose revocation never happened (as a failed connector leaves it) is counted and fails NHI1."""
    from sqlalchemy import update

    from tether.store.credentials_tables import leases

    settings, client, rt = deploy()
    _flow(client, domain, settings)
    # Stand-in for a revocation that never reached the real system: the row says "not revoked".
    with rt.db.begin() as conn:
        changed = conn.execute(update(leases).values(revoked_at=None, state="active")).rowcount
    assert changed == 1
    statuses, ev = _statuses(settings)
    assert ev["credentials.outlived_task"]["value"] == 1
    assert statuses["NHI1:2025"] == "not met" and statuses["GOVERN 1.7"] == "not met"
    assert statuses["MANAGE 2.4"] == "not met"

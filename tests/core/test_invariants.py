"""The invariants of docs/architecture.md that the broker core must hold, one test each."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from tether.audit.chain import capture_events
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.errors import Forbidden, PolicyError, Unavailable
from tether.model import Grant, TaskState, Workload
from tether.runtime import Runtime
from tether.store import tables as t

READ_Q = {"action": "read", "resource": "tickets.queue"}


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def _workload(domain, path="bot"):
    return Workload(domain.spiffe_id(path), domain.name, "jwt-svid")


def _count(rt, table):
    with rt.db.read() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_no_policy_loaded_denies_everything(settings, domain):
    """With an empty policy directory even a task cannot be opened (deny all)."""
    for f in settings.policy_path.glob("*.cedar"):
        f.unlink()
    rt = Runtime.start(settings)
    try:
        with pytest.raises(Forbidden) as exc:
            rt.broker.open_task(
                _workload(domain),
                OpenTaskRequest("support.triage", "", (Grant("read", "tickets.queue"),), 60),
            )
        assert exc.value.code == "task_open_denied"
        assert exc.value.details["reasons"][0]["policy_id"] == "no_policy"
    finally:
        rt.close()


def test_invalid_policy_refuses_to_start_naming_file_and_line(settings):
    """A fresh start with an invalid policy set refuses to start, naming file and line."""
    (settings.policy_path / "99-bad.cedar").write_text(
        "permit(principal, action, resource)\nwhen { nope };\n"
    )
    with pytest.raises(PolicyError) as exc:
        Runtime.start(settings)
    # The line of the offending word, not of the policy's start.
    assert exc.value.details["file"].endswith("99-bad.cedar") and exc.value.details["line"] == 2


def test_reload_with_invalid_policy_keeps_old_set_and_audits(runtime, agent):
    """A failed reload leaves the previous set in force and records policy.reload_failed."""
    tok = agent.open([READ_Q]).json()["task_token"]
    before = runtime.engine.bundle.version
    (runtime.settings.policy_path / "99-bad.cedar").write_text("forbid(principal, action, resource) when {")
    with capture_events() as events, pytest.raises(PolicyError):
        runtime.reload_policy()
    assert runtime.engine.bundle.version == before
    assert [e.type for e in events] == ["policy.reload_failed"]
    assert agent.authorize(tok, "read", "tickets.queue").json()["decision"] == "allow"


def test_reload_with_valid_policy_changes_version_and_decisions(runtime, agent):
    """A good reload swaps the set: decisions carry the new version and obey it."""
    tok = agent.open([READ_Q]).json()["task_token"]
    (runtime.settings.policy_path / "50-freeze.cedar").write_text(
        '@id("freeze") @reason("change freeze")\nforbid(principal, action, resource);\n'
    )
    version = runtime.reload_policy()
    d = agent.authorize(tok, "read", "tickets.queue").json()
    assert d["decision"] == "deny" and d["policy_version"] == version


def test_failed_audit_write_denies_and_leaves_no_state(runtime, agent, monkeypatch):
    """No action without a record: if the audit append fails, the open is refused and nothing is stored."""

    def broken(*a, **k):
        raise Unavailable("disk full", code="audit_unavailable")

    before = _count(runtime, t.tasks)
    from tether.audit import chain

    monkeypatch.setattr(chain.Unit, "emit", broken)
    r = agent.open([READ_Q])
    assert r.status_code == 503 and r.json()["code"] == "audit_unavailable"
    assert _count(runtime, t.tasks) == before


def test_audit_insert_failure_rolls_back_state_change(runtime, agent):
    """A database-level audit failure (table gone) rolls the task close back and answers 503."""
    body = agent.open([READ_Q]).json()
    with runtime.db.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    r = agent.client.post(f"/v1/tasks/{body['task_id']}/close", headers=_bearer(body["task_token"]))
    assert r.status_code == 503 and r.json()["code"] == "audit_unavailable"
    with runtime.db.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
    task, _ = runtime.broker.get_task(body["task_id"])
    assert task.state is TaskState.ACTIVE


def test_store_down_is_503_and_deny(agent, runtime):
    """When the store is unreachable, authorize answers 503 and never allow."""
    from tether.store.db import Database

    tok = agent.open([READ_Q]).json()["task_token"]
    unreachable = (
        "sqlite:////nonexistent/dir/tether.db"
        if runtime.db.dialect == "sqlite"
        else runtime.db.engine.url.set(host="/nonexistent").render_as_string(hide_password=False)
    )
    runtime.db.dispose()
    runtime.db.engine = Database(unreachable).engine  # the broker's store vanishes under it
    r = agent.authorize(tok, "read", "tickets.queue")
    assert r.status_code == 503
    assert r.json()["code"] in ("audit_unavailable", "store_unavailable")


def test_policy_evaluation_error_denies(runtime, agent, monkeypatch):
    """An exception inside the policy engine is a deny, never an allow."""
    tok = agent.open([READ_Q]).json()["task_token"]

    def boom(*a, **k):
        raise RuntimeError("engine bug")

    monkeypatch.setattr(type(runtime.engine), "_decide", boom)
    d = agent.authorize(tok, "read", "tickets.queue").json()
    assert d["decision"] == "deny" and d["code"] == "policy_error"


def test_every_decision_is_recorded(runtime, agent):
    """Allow, deny and out-of-scope decisions each commit one decision event with their id."""
    tok = agent.open([READ_Q]).json()["task_token"]
    with capture_events() as events:
        ids = [
            agent.authorize(tok, a, r).json()["decision_id"]
            for a, r in [("read", "tickets.queue"), ("read", "crm.customers")]
        ]
    assert [e.decision_id for e in events if e.type == "decision"] == ids


def test_child_scope_wider_than_parent_is_refused(client, make_agent):
    """Attenuation: a delegation may not name a grant the parent does not hold."""
    a, b = make_agent("a"), make_agent("b")
    p = a.open([READ_Q]).json()
    r = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        headers=_bearer(p["task_token"]),
        json={"child": b.spiffe_id, "scope": [{"action": "read", "resource": "crm"}], "ttl_seconds": 60},
    )
    assert r.status_code == 403 and r.json()["code"] == "scope_exceeds_parent"


def test_child_redeem_cannot_widen_delegated_scope(client, make_agent):
    """Attenuation: redeeming a delegation with a wider scope than offered is refused."""
    a, b = make_agent("a"), make_agent("b")
    p = a.open([READ_Q, {"action": "read", "resource": "crm"}]).json()
    dlg = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        headers=_bearer(p["task_token"]),
        json={"child": b.spiffe_id, "scope": [READ_Q], "ttl_seconds": 60},
    ).json()
    r = b.open([READ_Q, {"action": "read", "resource": "crm"}], delegation=dlg["delegation"])
    assert r.status_code == 403 and r.json()["code"] == "scope_exceeds_parent"


def test_service_grant_covers_its_tools_but_not_other_services(runtime, agent):
    """A scope entry naming a service covers its datasets, nothing outside it."""
    tok = agent.open([{"action": "read", "resource": "tickets"}]).json()["task_token"]
    assert agent.authorize(tok, "read", "tickets.queue").json()["decision"] == "allow"
    assert agent.authorize(tok, "read", "crm.customers").json()["code"] == "out_of_scope"


def test_child_cannot_outlive_parent(client, make_agent):
    """Attenuation: a delegation whose TTL exceeds the parent's remaining life is refused."""
    a, b = make_agent("a"), make_agent("b")
    p = a.open([READ_Q], ttl=60).json()
    r = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        headers=_bearer(p["task_token"]),
        json={"child": b.spiffe_id, "scope": [READ_Q], "ttl_seconds": 3600},
    )
    assert r.status_code == 403 and r.json()["code"] == "ttl_exceeds_parent"


def test_delegation_depth_is_bounded(tmp_path, store_url, domain):
    """Attenuation: with tasks.max_depth = 1, a child may not delegate further."""
    from starlette.testclient import TestClient

    from tether.server.app import create_app
    from tether.testing import make_settings

    settings = make_settings(
        tmp_path / "s",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod", "identity": {"dpop": "optional"}, "tasks": {"max_depth": 1}},
    )
    rt = Runtime.start(settings)
    try:
        with TestClient(create_app(rt)) as client:

            def svid(p):
                return _bearer(domain.svid(domain.spiffe_id(p), settings.broker_audience))

            p = client.post(
                "/v1/tasks",
                headers=svid("a"),
                json={"intent": "support.triage", "scope": [READ_Q], "ttl_seconds": 300},
            ).json()
            dlg = client.post(
                f"/v1/tasks/{p['task_id']}/delegations",
                headers=_bearer(p["task_token"]),
                json={"child": domain.spiffe_id("b"), "scope": [READ_Q], "ttl_seconds": 100},
            )
            c = client.post(
                "/v1/tasks", headers=svid("b"), json={"delegation": dlg.json()["delegation"]}
            ).json()
            r = client.post(
                f"/v1/tasks/{c['task_id']}/delegations",
                headers=_bearer(c["task_token"]),
                json={"child": domain.spiffe_id("c"), "scope": [READ_Q], "ttl_seconds": 50},
            )
            assert r.status_code == 403 and r.json()["code"] == "depth_exceeded"
    finally:
        rt.close()


def test_delegation_is_single_use(client, make_agent):
    """A delegation redeemed once cannot be redeemed again."""
    a, b = make_agent("a"), make_agent("b")
    p = a.open([READ_Q]).json()
    dlg = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        headers=_bearer(p["task_token"]),
        json={"child": b.spiffe_id, "scope": [READ_Q], "ttl_seconds": 60},
    ).json()
    assert b.open(None, delegation=dlg["delegation"]).status_code == 201
    r = b.open(None, delegation=dlg["delegation"])
    assert r.status_code == 409 and r.json()["code"] == "delegation_used"


def test_delegation_stolen_by_another_agent_is_refused(client, make_agent):
    """A delegation is bound to the named child: a different agent cannot redeem it."""
    a, b, mallory = make_agent("a"), make_agent("b"), make_agent("mallory")
    p = a.open([READ_Q]).json()
    dlg = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        headers=_bearer(p["task_token"]),
        json={"child": b.spiffe_id, "scope": [READ_Q], "ttl_seconds": 60},
    ).json()
    r = mallory.open(None, delegation=dlg["delegation"])
    assert r.status_code == 403 and r.json()["code"] == "delegation_invalid"


def test_task_ttl_is_capped_by_config(runtime, agent):
    """A requested TTL beyond tasks.max_ttl_seconds is capped to it."""
    body = agent.open([READ_Q], ttl=10 * 24 * 3600).json()
    task, _ = runtime.broker.get_task(body["task_id"])
    assert task.expires_at - task.created_at == pytest.approx(runtime.settings.tasks.max_ttl_seconds, abs=1)


def test_expired_task_is_denied_and_reaped(runtime, agent):
    """After expiry a token is dead at once, and the reaper marks the task expired."""
    body = agent.open([READ_Q]).json()
    now = runtime.broker.clock()
    runtime.broker.clock = lambda: now + 10_000
    r = agent.authorize(body["task_token"], "read", "tickets.queue")
    assert r.status_code == 401 and r.json()["code"] == "token_expired"
    assert body["task_id"] in runtime.broker.expire_due()
    task, _ = runtime.broker.get_task(body["task_id"])
    assert task.state is TaskState.EXPIRED


def test_revoke_by_agent_ends_all_its_task_trees(runtime, make_agent, client):
    """The kill switch for one agent revokes its tasks and their descendants."""
    a, b = make_agent("a"), make_agent("b")
    p = a.open([READ_Q]).json()
    dlg = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        headers=_bearer(p["task_token"]),
        json={"child": b.spiffe_id, "scope": [READ_Q], "ttl_seconds": 60},
    ).json()
    c = b.open(None, delegation=dlg["delegation"]).json()
    ended = runtime.broker.revoke(agent=a.spiffe_id, by="uid:0")
    assert set(ended) == {p["task_id"], c["task_id"]}
    d = b.authorize(c["task_token"], "read", "tickets.queue").json()
    assert d["code"] == "task_not_active"


def test_taint_flows_up_to_the_delegating_parent(client, make_agent):
    """A parent cannot send out what its child read: the taint is recorded on ancestors too."""
    a, b = make_agent("a"), make_agent("b")
    p = a.open([{"action": "read", "resource": "crm"}, {"action": "send", "resource": "email.send"}]).json()
    dlg = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        headers=_bearer(p["task_token"]),
        json={"child": b.spiffe_id, "scope": [{"action": "read", "resource": "crm"}], "ttl_seconds": 60},
    ).json()
    c = b.open(None, delegation=dlg["delegation"]).json()
    assert b.authorize(c["task_token"], "read", "crm.customers").json()["decision"] == "allow"
    d = a.authorize(p["task_token"], "send", "email.send").json()
    assert d["decision"] == "deny"


def test_concurrent_approval_use_allows_exactly_once(runtime, agent):
    """Two racing calls on one granted approval: exactly one is allowed."""
    from concurrent.futures import ThreadPoolExecutor

    body = agent.open([{"action": "tool:call", "resource": "billing.refund"}], intent="billing.refund").json()
    req = AuthorizeRequest("tool:call", "billing.refund", {"ticket_id": "T-1"})
    first = runtime.broker.authorize(body["task_token"], req)
    runtime.broker.decide_approval(first.decision.approval_id, grant=True, by="uid:0")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: runtime.broker.authorize(body["task_token"], req), range(4)))
    assert sum(r.decision.allowed for r in results) == 1

"""Shadow mode: a candidate set beside the enforced one, audited, never acting; promote."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from tether.audit import event as ev
from tether.audit.verify import row_to_event
from tether.errors import Conflict, PolicyError
from tether.model import Outcome
from tether.runtime import Runtime
from tether.server.admin import Operator
from tether.store import tables as t
from tether.testing import make_settings

from .test_replay import BAD_POLICY, CANDIDATE, DOMAIN, SCOPE, _authorize, candidate_dir, record

OP = Operator(uid=1000, pid=1)


def op(rt: Runtime, name: str, **args: Any) -> Any:
    return rt.operations[name](rt, args, OP)


def events(rt: Runtime, *types: str) -> list[ev.Event]:
    with rt.db.read() as conn:
        rows = conn.execute(
            select(t.audit_events).where(t.audit_events.c.type.in_(types)).order_by(t.audit_events.c.seq)
        ).all()
    return [row_to_event(r._mapping) for r in rows]


def test_shadow_divergences_appear_as_events_and_counters(runtime, tmp_path):
    """Each decision the candidate would decide otherwise is a `policy.shadow_diverged` event."""
    op(runtime, "policy.shadow", directory=str(candidate_dir(runtime, tmp_path)))
    rec = record(runtime)
    diverged = {e.decision_id: e.payload for e in events(runtime, ev.POLICY_SHADOW_DIVERGED)}
    assert set(diverged) == {rec.ids["comment"], rec.ids["post"], rec.ids["customers"]}
    comment = diverged[rec.ids["comment"]]
    assert comment["kind"] == "allow→deny"
    assert comment["enforced"]["policies"] == ["triage-comment"]
    assert comment["shadow"]["policies"] == ["no-comments"]
    assert diverged[rec.ids["customers"]]["kind"] == "allow→approval_required"
    status = op(runtime, "policy.shadow")
    assert status["counters"] == {
        "evaluated": 4,
        "diverged": 3,
        "by_kind": {"allow→approval_required": 1, "allow→deny": 1, "deny→allow": 1},
        "errors": 0,
    }


def test_shadow_never_changes_the_enforced_decision(runtime, tmp_path):
    """With a shadow that forbids everything, the enforced allows still allow."""
    forbid_all = '@id("nothing")\nforbid (principal, action, resource);'
    op(runtime, "policy.shadow", directory=str(candidate_dir(runtime, tmp_path, forbid_all)))
    wl_tok = _open(runtime)
    assert _authorize(runtime, wl_tok, "read", "tickets.queue").decision.outcome is Outcome.ALLOW


def test_shadow_evaluation_error_is_audited_and_does_not_change_the_decision(runtime, tmp_path):
    """A shadow policy that overflows at evaluation: `policy.shadow_error`, the allow stands."""
    overflow = (
        '@id("overflows")\nforbid (principal, action, resource) '
        "when { context.task.remaining_seconds * 9223372036854775807 > 0 };"
    )
    op(runtime, "policy.shadow", directory=str(candidate_dir(runtime, tmp_path, overflow)))
    result = _authorize(runtime, _open(runtime), "read", "tickets.queue")
    assert result.decision.outcome is Outcome.ALLOW
    (error,) = events(runtime, ev.POLICY_SHADOW_ERROR)
    assert error.decision_id == result.decision.id
    assert error.payload["enforced"]["outcome"] == "allow"
    assert op(runtime, "policy.shadow")["counters"]["errors"] == 1


def test_bad_shadow_directory_is_refused_with_the_reload_message(runtime, tmp_path):
    """An invalid candidate: the reload's code and message; the previous shadow stays."""
    good = candidate_dir(runtime, tmp_path)
    op(runtime, "policy.shadow", directory=str(good))
    bad = candidate_dir(runtime, tmp_path, BAD_POLICY, "bad")
    with pytest.raises(PolicyError) as reload_error:
        runtime.engine.reload(bad)
    with pytest.raises(PolicyError) as shadow_error:
        op(runtime, "policy.shadow", directory=str(bad))
    assert (shadow_error.value.code, shadow_error.value.message) == (
        reload_error.value.code,
        reload_error.value.message,
    )
    assert runtime.engine.shadow_source == str(good)
    assert [e.payload["state"] for e in events(runtime, ev.POLICY_SHADOW_SET)] == ["on", "refused"]


def test_shadow_off_stops_evaluating(runtime, tmp_path):
    """`off`: no shadow set, no more divergence events."""
    op(runtime, "policy.shadow", directory=str(candidate_dir(runtime, tmp_path)))
    op(runtime, "policy.shadow", directory="off")
    record(runtime)
    assert runtime.engine.shadow is None
    assert events(runtime, ev.POLICY_SHADOW_DIVERGED) == []


def test_promote_puts_the_shadow_set_in_force_through_reload(runtime, tmp_path):
    """After promote the candidate decides, its files are the policy directory's, shadow is off."""
    cand = candidate_dir(runtime, tmp_path)
    shadow_version = op(runtime, "policy.shadow", directory=str(cand))["shadow_version"]
    out = op(runtime, "policy.promote")
    assert out["policy_version"] == shadow_version == runtime.engine.bundle.version
    assert runtime.engine.shadow is None
    assert (runtime.settings.policy_path / "90-candidate.cedar").read_text() == CANDIDATE
    assert (
        _authorize(runtime, _open(runtime), "tool:call", "tickets.comment").decision.outcome is Outcome.DENY
    )
    loaded = events(runtime, ev.POLICY_LOADED)[-1]
    assert loaded.payload["version"] == shadow_version


def test_promote_without_a_shadow_is_refused(runtime):
    """Nothing to promote: a conflict with a code, the enforced set untouched."""
    before = runtime.engine.bundle.version
    with pytest.raises(Conflict) as exc:
        op(runtime, "policy.promote")
    assert exc.value.code == "no_shadow" and runtime.engine.bundle.version == before


def test_promote_refuses_a_shadow_directory_changed_since(runtime, tmp_path):
    """Files edited after shadowing are not what was watched: promote refuses."""
    cand = candidate_dir(runtime, tmp_path)
    op(runtime, "policy.shadow", directory=str(cand))
    (cand / "91-late.cedar").write_text('@id("late")\nforbid (principal, action, resource);')
    with pytest.raises(Conflict) as exc:
        op(runtime, "policy.promote")
    assert exc.value.code == "shadow_changed"


def test_shadow_from_config_at_start(tmp_path, sqlite_url, domain):
    """`[policy] shadow = "DIR"` shadows DIR from the start."""
    cand = tmp_path / "cand"
    settings = make_settings(
        tmp_path / "state",
        store_url=sqlite_url,
        domain=domain,
        config_extra=f'\n[policy]\nshadow = "{cand}"\n',
    )
    cand.mkdir()
    for p in settings.policy_path.glob("*.cedar"):
        (cand / p.name).write_text(p.read_text())
    (cand / "90-candidate.cedar").write_text(CANDIDATE)
    rt = Runtime.start(settings)
    try:
        assert rt.engine.shadow_source == str(cand)
        record(rt)
        assert len(events(rt, ev.POLICY_SHADOW_DIVERGED)) == 3
    finally:
        rt.close()


def _open(rt: Runtime) -> str:
    from tether.broker import OpenTaskRequest
    from tether.model import Workload

    wl = Workload(f"spiffe://{DOMAIN}/triage", DOMAIN, "jwt-svid")
    return rt.broker.open_task(wl, OpenTaskRequest("support.triage", "x", SCOPE, 600)).token


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_shadow_divergences_are_counted_in_metrics(runtime, tmp_path):
    """`/metrics` counts `policy.shadow_diverged` events by kind."""
    from starlette.testclient import TestClient

    from tether.server.app import create_app

    def value(text: str, kind: str) -> float:
        line = f'tether_policy_shadow_divergences_total{{kind="{kind}"}} '
        return sum(float(x.split(" ")[-1]) for x in text.splitlines() if x.startswith(line))

    with TestClient(create_app(runtime), client=("127.0.0.1", 50000)) as c:
        before = c.get("/metrics").text
        op(runtime, "policy.shadow", directory=str(candidate_dir(runtime, tmp_path)))
        record(runtime)
        after = c.get("/metrics").text
    assert value(after, "allow→deny") - value(before, "allow→deny") == 1
    assert value(after, "deny→allow") - value(before, "deny→allow") == 1

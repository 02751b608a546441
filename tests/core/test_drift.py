"""Drift as a risk signal, end to end: a scripted agent's baseline is learnt from its
closed tasks, and a policy that asks for approval on a new action flips the decision
when the agent's behaviour changes mid-task."""

from __future__ import annotations

from typing import Any

from tether.runtime import Runtime
from tether.server.admin import Operator

QUEUE = {"action": "read", "resource": "tickets.queue"}
CUSTOMERS = {"action": "read", "resource": "crm.customers"}
DRIFT_POLICY = """@id("drift-new-action")
@approval("this intent has never done this before")
forbid (principal, action in Tether::Action::"reads", resource)
when { context.risk.drift.new_action_for_intent }
unless { context.approval.granted };
"""


def _run_routine_task(agent: Any) -> None:
    """What the agent normally does for support.triage: read the queue, then close."""
    task = agent.open([QUEUE]).json()
    for _ in range(2):
        assert agent.authorize(task["task_token"], "read", "tickets.queue").json()["decision"] == "allow"
    r = agent.client.post(
        f"/v1/tasks/{task['task_id']}/close", headers={"Authorization": f"Bearer {task['task_token']}"}
    )
    assert r.status_code == 200


def _show(runtime: Runtime, task_id: str) -> dict[str, Any]:
    view: dict[str, Any] = runtime.operations["task.show"](runtime, {"task_id": task_id}, Operator(0, 0))
    return view


def test_cold_start_scores_zero_and_the_new_action_is_allowed(runtime: Runtime, agent: Any) -> None:
    """Without closed tasks there is no baseline: drift is 0, marked cold, and policy does not fire."""
    (runtime.settings.policy_path / "60-drift.cedar").write_text(DRIFT_POLICY)
    runtime.reload_policy()
    task = agent.open([QUEUE, CUSTOMERS]).json()
    assert agent.authorize(task["task_token"], "read", "crm.customers").json()["decision"] == "allow"
    drift = _show(runtime, task["task_id"])["drift"]
    assert drift["baseline"]["cold_start"] is True and drift["max_score"] == 0


def test_behaviour_change_mid_task_requires_approval(runtime: Runtime, agent: Any) -> None:
    """After three routine tasks, reading customer records mid-task is new for the intent: approval."""
    (runtime.settings.policy_path / "60-drift.cedar").write_text(DRIFT_POLICY)
    runtime.reload_policy()
    for _ in range(3):
        _run_routine_task(agent)
    task = agent.open([QUEUE, CUSTOMERS]).json()
    token = task["task_token"]
    routine = agent.authorize(token, "read", "tickets.queue").json()
    assert routine["decision"] == "allow"
    strayed = agent.authorize(token, "read", "crm.customers").json()
    assert strayed["decision"] == "approval_required"
    assert [r["policy_id"] for r in strayed["reasons"]] == ["drift-new-action"]

    view = _show(runtime, task["task_id"])["drift"]
    assert view["baseline"]["tasks"] == 3 and view["baseline"]["cold_start"] is False
    assert view["baseline"]["pairs"] == [{"action": "read", "resource": "tickets.queue", "tasks": 3}]
    assert view["new_actions"] == [{"action": "read", "resource": "crm.customers"}]
    assert view["max_score"] >= 60

    # The same request without the drift rule is allowed: the signal is what flipped it.
    (runtime.settings.policy_path / "60-drift.cedar").unlink()
    runtime.reload_policy()
    assert agent.authorize(token, "read", "crm.customers").json()["decision"] == "allow"


def test_revoked_tasks_teach_nothing(runtime: Runtime, agent: Any) -> None:
    """Only closed tasks are learnt: a revoked task's actions never become the baseline."""
    for _ in range(3):
        task = agent.open([CUSTOMERS]).json()
        assert agent.authorize(task["task_token"], "read", "crm.customers").json()["decision"] == "allow"
        runtime.broker.revoke(task_id=task["task_id"], by="test")
    task = agent.open([CUSTOMERS]).json()
    assert _show(runtime, task["task_id"])["drift"]["baseline"]["tasks"] == 0


def test_a_close_cuts_credentials_before_drift_learns(runtime: Runtime, agent: Any, monkeypatch: Any) -> None:
    """Drift learning runs a store transaction after every close; the cut of the task's
    credentials is queued before it, so learning never delays revocation."""
    from tether.credentials.service import Credentials
    from tether.drift import Drift

    order: list[str] = []
    cut, learn = Credentials.task_event, Drift.learn

    def cutting(self: Credentials, task_id: str) -> None:
        order.append("cut")
        cut(self, task_id)

    def learning(self: Drift, task_id: str) -> bool:
        order.append("learn")
        return learn(self, task_id)

    monkeypatch.setattr(Credentials, "task_event", cutting)
    monkeypatch.setattr(Drift, "learn", learning)
    _run_routine_task(agent)
    assert order == ["cut", "learn"]

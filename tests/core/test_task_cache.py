"""The per-task cache on the decision path holds only what a task never changes: a task
ended behind this process's back (another replica, raw SQL) is refused at the next call."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.errors import Unauthenticated
from tether.model import Grant, Workload
from tether.runtime import Runtime

READ = AuthorizeRequest("read", "tickets.queue", {"ticket": "T-1"})


def _open(runtime: Runtime) -> tuple[str, str]:
    wl = Workload("spiffe://support.example/cache", "support.example", "jwt-svid")
    opened = runtime.broker.open_task(
        wl, OpenTaskRequest("support.triage", "cache", (Grant("read", "tickets.queue"),), 600)
    )
    return opened.task.id, opened.token


def test_task_revoked_by_another_replica_is_refused_at_the_next_call(runtime):
    """A revoke written straight to the store (as another replica would) denies the very next call."""
    task_id, token = _open(runtime)
    assert runtime.broker.authorize(token, READ).decision.allowed  # the task is now cached
    with runtime.db.begin() as conn:
        conn.execute(
            text("UPDATE tasks SET state = 'revoked', closed_at = 1 WHERE id = :id"), {"id": task_id}
        )
    decision = runtime.broker.authorize(token, READ).decision
    assert not decision.allowed and decision.code == "task_not_active"


def test_closed_task_is_refused_immediately_after_close_is_acknowledged(runtime):
    """close_task returns, and the same process refuses the task's next call."""
    task_id, token = _open(runtime)
    assert runtime.broker.authorize(token, READ).decision.allowed
    runtime.broker.close_task(task_id, by="test")
    decision = runtime.broker.authorize(token, READ).decision
    assert not decision.allowed and decision.code == "task_not_active"


def test_deleted_task_row_is_not_served_from_the_cache(runtime):
    """A task row that disappeared is an unknown task, whatever was cached."""
    task_id, token = _open(runtime)
    assert runtime.broker.authorize(token, READ).decision.allowed
    with runtime.db.begin() as conn:
        conn.execute(text("DELETE FROM tasks WHERE id = :id"), {"id": task_id})
    with pytest.raises(Unauthenticated) as refused:
        runtime.broker.authorize(token, READ)
    assert refused.value.code == "token_unknown_task"

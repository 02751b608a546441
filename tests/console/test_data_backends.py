"""The console's store reads on both backends (the page tests use SQLite only)."""

from __future__ import annotations

import pytest

from tether.server.console import data


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    ]
)
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def test_console_queries_agree_on_both_backends(runtime, make_agent):
    """Task filters (agent substring with LIKE metacharacters), approval views and the kill plan."""
    orch = make_agent("orchestrator")
    a = orch.open([{"action": "read", "resource": "tickets"}]).json()["task_id"]
    bot = make_agent("billing-bot")
    b = bot.open([{"action": "tool:call", "resource": "billing.refund"}], intent="billing.refund").json()
    d = bot.authorize(
        b["task_token"], "tool:call", "billing.refund", {"ticket_id": "T-3", "secret": "x"}
    ).json()
    with runtime.db.read() as conn:
        assert [t.id for t in data.tasks(conn, agent="orchestr")] == [a]
        assert data.tasks(conn, agent="%") == []  # a LIKE wildcard is a literal here
        assert [t.id for t in data.tasks(conn, intent="billing.refund", state="active")] == [b["task_id"]]
        views = data.approvals(conn, state="pending", now=runtime.broker.clock())
        assert [v.approval.id for v in views] == [d["approval_id"]]
        assert views[0].task is not None and views[0].arguments["secret"] == "[masked]"
        assert (
            views[0].risk["first_use"] is True and views[0].reasons[0]["policy_id"] == "refund-needs-approval"
        )
        plan = data.kill_plan(conn, "everything", "")
        assert {t.id for t in plan.tasks} == {a, b["task_id"]}
        assert data.unrevoked(conn, []) == 0

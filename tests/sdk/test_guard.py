"""@guard: each call authorized in the current task, arguments to policy, fail closed."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from tether.errors import InvalidRequest
from tether.sdk import ApprovalRequired, Client, Denied, NoActiveTask, current_decision, guard

REFUND = [("tool:call", "billing.refund"), ("read", "billing")]
calls: list[str] = []


@guard(action="tool:call", resource="billing.refund")
def refund(ticket_id: str, amount_cents: int) -> str:
    calls.append(ticket_id)
    return f"refunded {ticket_id}"


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


def test_guard_outside_a_task_refuses_and_does_not_run():
    """No current task: NoActiveTask, and the tool body never runs."""
    with pytest.raises(NoActiveTask) as exc:
        refund("T-1", 100)
    assert exc.value.code == "no_active_task" and calls == []


def test_arguments_reach_policy(sdk: Client):
    """A refund whose ticket_id fails the policy's pattern is denied by `refund-needs-ticket`."""
    with sdk.task("billing.refund", REFUND, ttl=60), pytest.raises(Denied) as exc:
        refund("X-9", 100)
    assert "refund-needs-ticket" in exc.value.policy_ids and calls == []


def test_approval_then_identical_call_runs(sdk: Client, approve: Any):
    """The guarded refund needs approval; after it, the same call runs once."""
    with sdk.task("billing.refund", REFUND, ttl=60):
        with pytest.raises(ApprovalRequired) as exc:
            refund("T-7", 100)
        assert calls == []
        approve(exc.value.approval_id)
        assert refund("T-7", 100) == "refunded T-7"
    assert calls == ["T-7"]


def test_current_decision_inside_the_call(sdk: Client):
    """Inside a guarded call, current_decision() is that call's allow."""
    seen: list[str] = []

    @guard(action="read", resource="billing.invoices")
    def read_invoices() -> None:
        seen.append(current_decision().decision_id)

    with sdk.task("billing.refund", REFUND, ttl=60):
        read_invoices()
    assert seen and seen[0].startswith("dec_")


def test_resource_can_depend_on_arguments(sdk: Client):
    """A callable resource is computed from the call's arguments."""

    @guard(action="read", resource=lambda dataset: dataset)
    def read(dataset: str) -> str:
        return dataset

    with sdk.task("support.triage", [("read", "tickets")], ttl=60):
        assert read("tickets.queue") == "tickets.queue"
        with pytest.raises(Denied) as exc:
            read("crm.customers")
    assert exc.value.code == "out_of_scope"


def test_unserializable_argument_is_refused(sdk: Client):
    """An argument policy cannot see is refused (`argument_not_serializable`), not dropped."""

    @guard(action="read", resource="tickets")
    def read(handle: object) -> None: ...

    with sdk.task("support.triage", [("read", "tickets")], ttl=60), pytest.raises(InvalidRequest) as exc:
        read(object())
    assert exc.value.code == "argument_not_serializable"


def test_exclude_and_dataclass_arguments(sdk: Client):
    """Excluded arguments stay out; dataclasses are sent as objects."""

    @dataclasses.dataclass
    class Query:
        text: str

    @guard(action="read", resource="tickets", exclude=["conn"])
    def search(conn: object, query: Query) -> str:
        return query.text

    with sdk.task("support.triage", [("read", "tickets")], ttl=60):
        assert search(object(), Query("refund")) == "refund"


def test_async_function_with_sync_task(sdk: Client):
    """An async guarded tool works inside a sync task (authorized off the loop)."""

    @guard(action="read", resource="tickets")
    async def read() -> str:
        return "ok"

    with sdk.task("support.triage", [("read", "tickets")], ttl=60):
        assert asyncio.run(read()) == "ok"

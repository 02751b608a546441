"""LangChain: guarded BaseTools invoked directly (no LLM, no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import ToolMessage
from langchain_core.tools import tool

from tether.sdk import Client
from tether.sdk.integrations.langchain import guard_tool, tether_tool

REFUND = [("tool:call", "billing.refund"), ("read", "billing")]
ran: list[str] = []


@tool
def refund(ticket_id: str, amount_cents: int) -> str:
    """Refund a customer for a ticket."""
    ran.append(ticket_id)
    return f"refunded {ticket_id}"


guarded_refund = guard_tool(refund, resource="billing.refund")


@tether_tool(action="read", resource="billing.invoices")
def invoice(number: str) -> str:
    """Look up an invoice."""
    ran.append(number)
    return f"invoice {number}"


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


def test_guarded_tool_keeps_name_and_schema():
    """The guarded tool shows the model the same name, description and argument schema."""
    assert guarded_refund.name == "refund" and guarded_refund.description == refund.description
    assert set(guarded_refund.args) == {"ticket_id", "amount_cents"}


def test_denied_tool_call_becomes_a_tool_message(sdk: Client):
    """Invoked with a tool call, a denial comes back as a ToolMessage the agent can read."""
    with sdk.task("billing.refund", REFUND, ttl=60):
        msg = guarded_refund.invoke(
            {
                "name": "refund",
                "args": {"ticket_id": "X-1", "amount_cents": 3},
                "id": "call-1",
                "type": "tool_call",
            }
        )
    assert isinstance(msg, ToolMessage) and str(msg.content).startswith("TETHER_DENIED") and ran == []


def test_approved_call_runs(sdk: Client, approve: Any):
    """After the approval, the identical call runs the inner tool."""
    with sdk.task("billing.refund", REFUND, ttl=60) as task:
        first = guarded_refund.invoke({"ticket_id": "T-8", "amount_cents": 3})
        assert "TETHER_APPROVAL_REQUIRED" in first
        pending = task.check("tool:call", "billing.refund", {"ticket_id": "T-8", "amount_cents": 3})
        approve(pending.approval_id)
        assert guarded_refund.invoke({"ticket_id": "T-8", "amount_cents": 3}) == "refunded T-8"
    assert ran == ["T-8"]


def test_decorator_form_async_invoke(sdk: Client):
    """`@tether_tool` builds a guarded tool; `ainvoke` is authorized too."""
    with sdk.task("billing.refund", REFUND, ttl=60):
        assert asyncio.run(invoice.ainvoke({"number": "INV-2"})) == "invoice INV-2"
    assert ran == ["INV-2"]

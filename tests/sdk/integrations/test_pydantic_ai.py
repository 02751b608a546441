"""Pydantic AI: guarded tools driven by its own offline models (TestModel, FunctionModel)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from tether.sdk import Client
from tether.sdk.integrations.pydantic_ai import tether_tool

REFUND = [("tool:call", "billing.refund"), ("read", "billing")]
ran: list[str] = []


def refund(ticket_id: str, amount_cents: int) -> str:
    """Refund a customer for a ticket."""
    ran.append(ticket_id)
    return f"refunded {ticket_id}"


async def lookup_invoice(ctx: RunContext[None], invoice: str) -> str:
    """Look up an invoice."""
    ran.append(invoice)
    return f"invoice {invoice}"


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


def _calling(tool: str, args: dict[str, Any]) -> FunctionModel:
    """A scripted model: call ``tool`` once, then answer with what the tool returned."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart)]
        if returns:
            return ModelResponse(parts=[TextPart(str(returns[-1].content))])
        return ModelResponse(parts=[ToolCallPart(tool, args)])

    return FunctionModel(respond)


def test_test_model_run_completes_with_denial(sdk: Client):
    """With TestModel calling every tool, a denied refund is a readable result and the run ends normally."""
    agent = Agent(TestModel(), tools=[tether_tool(refund, action="tool:call", resource="billing.refund")])
    with sdk.task("billing.refund", REFUND, ttl=60):
        result = agent.run_sync("refund please")
    assert "TETHER_DENIED" in result.output and ran == []


def test_approval_required_is_told_to_the_model(sdk: Client):
    """A refund naming a ticket needs approval; the model reads the approval id."""
    agent = Agent(
        _calling("refund", {"ticket_id": "T-5", "amount_cents": 10}),
        tools=[tether_tool(refund, action="tool:call", resource="billing.refund")],
    )
    with sdk.task("billing.refund", REFUND, ttl=60):
        result = agent.run_sync("refund T-5")
    assert "approval_id=apr_" in result.output and ran == []


def test_allowed_tool_with_run_context_runs(sdk: Client):
    """A tool taking RunContext runs when allowed; the context is not sent to policy."""
    agent = Agent(
        _calling("lookup_invoice", {"invoice": "INV-1"}),
        tools=[tether_tool(lookup_invoice, action="read", resource="billing.invoices")],
    )
    with sdk.task("billing.refund", REFUND, ttl=60):
        result = agent.run_sync("find INV-1")
    assert result.output == "invoice INV-1" and ran == ["INV-1"]


def test_no_task_is_a_readable_refusal():
    """Outside a task the tool refuses (no_active_task) and never runs."""
    agent = Agent(
        _calling("refund", {"ticket_id": "T-1", "amount_cents": 1}),
        tools=[tether_tool(refund, action="tool:call", resource="billing.refund")],
    )
    result = agent.run_sync("refund")
    assert "no_active_task" in result.output and ran == []

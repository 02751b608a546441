"""OpenAI Agents SDK: guarded tools inside a real Runner loop.

No network and no LLM: the model is ``agents.testing.ScriptedModel``, the SDK's own
deterministic implementation of its ``Model`` interface, scripted to call the tool and
then answer; we read what the tool returned to it from the model's next input.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import Agent, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call

from tether.sdk import Client
from tether.sdk.integrations.openai_agents import guard_tool, tether_tool

REFUND = [("tool:call", "billing.refund"), ("read", "billing")]
ran: list[str] = []


@tether_tool(action="tool:call", resource="billing.refund")
def refund(ticket_id: str, amount_cents: int) -> str:
    """Refund a customer."""
    ran.append(ticket_id)
    return f"refunded {ticket_id}"


def _run(tool: Any, name: str, args: dict[str, Any]) -> tuple[str, ScriptedModel]:
    model = ScriptedModel([[function_call(name, args, call_id="c1")], [assistant_message("done")]])
    agent = Agent(name="support", model=model, tools=[tool])
    result = asyncio.run(Runner.run(agent, "please refund"))
    return str(result.final_output), model


def _tool_output(model: ScriptedModel) -> str:
    items = model.calls[1].input
    outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
    return str(outputs[0]["output"])


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


def test_denied_call_becomes_a_tool_result(sdk: Client):
    """A denied call is returned to the model as TETHER_DENIED; the run completes, the tool never ran."""
    with sdk.task("billing.refund", REFUND, ttl=60):
        final, model = _run(refund, "refund", {"ticket_id": "X-1", "amount_cents": 5})
    assert final == "done" and ran == []
    assert _tool_output(model).startswith("TETHER_DENIED")


def test_approval_required_reaches_the_model(sdk: Client):
    """A call that needs approval tells the model the approval id."""
    with sdk.task("billing.refund", REFUND, ttl=60):
        _, model = _run(refund, "refund", {"ticket_id": "T-1", "amount_cents": 5})
    assert "approval_id=apr_" in _tool_output(model) and ran == []


def test_allowed_call_runs_the_tool(sdk: Client, approve: Any, runtime: Any):
    """Once approved, the same call runs and its result reaches the model."""
    with sdk.task("billing.refund", REFUND, ttl=60) as task:
        pending = task.check("tool:call", "billing.refund", {"ticket_id": "T-2", "amount_cents": 5})
        approve(pending.approval_id)
        _, model = _run(refund, "refund", {"ticket_id": "T-2", "amount_cents": 5})
    assert _tool_output(model) == "refunded T-2" and ran == ["T-2"]


def test_guard_tool_wraps_an_existing_function_tool(sdk: Client):
    """guard_tool puts tether in front of a FunctionTool built elsewhere (resource = tool name)."""

    @function_tool
    def comment(text: str) -> str:
        """Comment on the ticket."""
        ran.append(text)
        return "ok"

    guarded = guard_tool(comment, resource="tickets.comment")
    with sdk.task("billing.refund", REFUND, ttl=60):
        _, model = _run(guarded, "comment", {"text": "hi"})
    assert _tool_output(model).startswith("TETHER_DENIED (out_of_scope)") and ran == []

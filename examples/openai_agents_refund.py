"""OpenAI Agents SDK + tether: a denied tool call is a result the model reads.

Runs offline: the model is the Agents SDK's own `ScriptedModel`; swap in a real model
(`Agent(model="gpt-…")`) and nothing else changes.

    python examples/openai_agents_refund.py
"""

from __future__ import annotations

import asyncio

from _broker import broker_client
from agents import Agent, Runner, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

from tether.sdk.integrations.openai_agents import tether_tool


@tether_tool(action="tool:call", resource="billing.refund")
def refund(ticket_id: str, amount_cents: int) -> str:
    """Refund a customer for a ticket."""
    return f"refunded {amount_cents} for {ticket_id}"


model = ScriptedModel(
    [
        [function_call("refund", {"ticket_id": "X-1", "amount_cents": 500}, call_id="c1")],
        [assistant_message("I could not refund that ticket.")],
    ]
)
agent = Agent(name="billing", model=model, tools=[refund])
set_tracing_disabled(True)  # offline: no trace export

with broker_client() as client, client.task("billing.refund", [("tool:call", "billing.refund")], ttl=120):
    result = asyncio.run(Runner.run(agent, "refund ticket X-1"))
    tool_output = next(
        i for i in model.calls[1].input if isinstance(i, dict) and i.get("type") == "function_call_output"
    )["output"]
    print("the model saw:", tool_output)
    print("final answer:", result.final_output)

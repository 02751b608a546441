"""Pydantic AI + tether: guarded tools, driven offline by Pydantic AI's TestModel.

python examples/pydantic_ai_lookup.py
"""

from __future__ import annotations

from _broker import broker_client
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from tether.sdk.integrations.pydantic_ai import tether_tool


def read_queue(limit: int) -> str:
    """Read the ticket queue."""
    return f"{limit} open tickets"


def post_to_customer_channel(text: str) -> str:
    """Post to the shared customer channel."""
    return "posted"


agent = Agent(
    TestModel(),
    tools=[
        tether_tool(read_queue, action="read", resource="tickets.queue"),
        tether_tool(post_to_customer_channel, action="send", resource="slack-external.post"),
    ],
)

with broker_client() as client, client.task("support.triage", [("read", "tickets")], ttl=120):
    print(agent.run_sync("summarize the queue").output)  # the post is outside the scope: denied

"""LangChain + tether: wrap any BaseTool; invoke it directly or from an agent loop.

python examples/langchain_tools.py
"""

from __future__ import annotations

from _broker import broker_client
from langchain_core.tools import tool

from tether.sdk.integrations.langchain import guard_tool


@tool
def comment(ticket: str, text: str) -> str:
    """Comment on a support ticket."""
    return f"commented on {ticket}"


guarded = guard_tool(comment, action="write", resource="tickets.comment")

with broker_client() as client, client.task("support.triage", [("write", "tickets")], ttl=120):
    print(guarded.invoke({"ticket": "T-7", "text": "looking into it"}))
    msg = guarded.invoke(
        {"name": "comment", "args": {"ticket": "T-7", "text": "hi"}, "id": "1", "type": "tool_call"}
    )
    print(type(msg).__name__, msg.content)
with broker_client() as client, client.task("support.triage", [("read", "tickets")], ttl=120):
    print(guarded.invoke({"ticket": "T-7", "text": "hi"}))  # out of scope: TETHER_DENIED …

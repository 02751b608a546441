"""LangChain: put tether in front of any ``BaseTool`` (``@tool``, ``StructuredTool``, …).

    from langchain_core.tools import tool
    from tether.sdk.integrations.langchain import guard_tool

    @tool
    def refund(ticket_id: str, amount_cents: int) -> str: ...

    refund = guard_tool(refund, action="tool:call", resource="billing.refund")

The tool's validated input goes to policy as the call's arguments. A denied call returns
``TETHER_DENIED …`` as the tool's output (a ``ToolMessage`` when invoked with a tool
call), so an agent loop reads the refusal instead of crashing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError
from tether.sdk.guard import jsonable
from tether.sdk.integrations._common import model_message
from tether.sdk.task import AsyncTask, current_task

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

__all__ = ["guard_tool", "tether_tool"]


def guard_tool(
    tool: BaseTool,
    *,
    action: str = "tool:call",
    resource: str | None = None,
    wait_for_approval: float | None = None,
) -> BaseTool:
    """A tool with ``tool``'s name, description and schema that asks tether before each call.

    ``resource`` defaults to the tool's name (so catalog tool ids can match tool names).
    """
    from langchain_core.tools import StructuredTool

    res = resource or tool.name

    def sync_call(**kwargs: Any) -> Any:
        try:
            task = current_task()
            args = jsonable(kwargs)
            if isinstance(task, AsyncTask):
                task.authorize_blocking(action, res, args, wait_for_approval=wait_for_approval)
            else:
                task.authorize(action, res, args, wait_for_approval=wait_for_approval)
        except TetherError as exc:
            return model_message(exc)
        return tool.invoke(kwargs)

    async def async_call(**kwargs: Any) -> Any:
        try:
            task = current_task()
            args = jsonable(kwargs)
            if isinstance(task, AsyncTask):
                await task.authorize(action, res, args, wait_for_approval=wait_for_approval)
            else:
                await asyncio.to_thread(
                    task.authorize, action, res, args, wait_for_approval=wait_for_approval
                )
        except TetherError as exc:
            return model_message(exc)
        return await tool.ainvoke(kwargs)

    return StructuredTool.from_function(
        func=sync_call,
        coroutine=async_call,
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        return_direct=tool.return_direct,
        infer_schema=False,
    )


def tether_tool(
    *, action: str, resource: str | None = None, wait_for_approval: float | None = None
) -> Callable[[Callable[..., Any]], BaseTool]:
    """``@tool`` + tether in one: ``@tether_tool(action="read", resource="crm.customers")``."""
    from langchain_core.tools import StructuredTool

    def decorate(fn: Callable[..., Any]) -> BaseTool:
        return guard_tool(
            StructuredTool.from_function(fn),
            action=action,
            resource=resource,
            wait_for_approval=wait_for_approval,
        )

    return decorate

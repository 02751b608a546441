"""OpenAI Agents SDK: function tools whose every call is authorized by tether.

    from tether.sdk.integrations.openai_agents import tether_tool

    @tether_tool(action="tool:call", resource="billing.refund")
    def refund(ticket_id: str, amount_cents: int) -> str: ...

    agent = Agent(name="support", tools=[refund])
    with client.task(intent="billing.refund", scope=[...]):
        await Runner.run(agent, "refund ticket T-1")

A denied call returns a tool output the model reads (``TETHER_DENIED …``) rather than
ending the run; :func:`guard_tool` wraps a ``FunctionTool`` you already have.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError
from tether.sdk.guard import GuardSpec, guard, jsonable
from tether.sdk.integrations._common import context_params, model_message
from tether.sdk.task import AsyncTask, current_task

if TYPE_CHECKING:
    from agents import FunctionTool, RunContextWrapper

__all__ = ["guard_tool", "tether_tool", "tool_error"]

_CONTEXT_TYPES = ("RunContextWrapper", "ToolContext")


def tool_error(ctx: RunContextWrapper[Any], error: Exception) -> str:
    """``failure_error_function``: tether refusals are shown to the model, other errors are not."""
    if isinstance(error, TetherError):
        return model_message(error)
    from agents.tool import default_tool_error_function

    return default_tool_error_function(ctx, error)


def tether_tool(
    *,
    action: str,
    resource: str | Callable[..., str],
    arguments: Sequence[str] | Callable[..., Mapping[str, Any]] | None = None,
    wait_for_approval: float | None = None,
    **function_tool_kwargs: Any,
) -> Callable[[Callable[..., Any]], FunctionTool]:
    """``@function_tool`` + ``@guard`` in one: the tool asks tether before it runs."""
    from agents import function_tool

    def decorate(fn: Callable[..., Any]) -> FunctionTool:
        guarded = guard(
            action,
            resource,
            arguments=arguments,
            wait_for_approval=wait_for_approval,
            exclude=context_params(fn, _CONTEXT_TYPES),
        )(fn)
        function_tool_kwargs.setdefault("failure_error_function", tool_error)
        tool: FunctionTool = function_tool(guarded, **function_tool_kwargs)
        return tool

    return decorate


def guard_tool(
    tool: FunctionTool,
    *,
    action: str = "tool:call",
    resource: str | None = None,
    wait_for_approval: float | None = None,
) -> FunctionTool:
    """Put tether in front of an existing ``FunctionTool`` (the tool's JSON arguments go to policy).

    ``resource`` defaults to the tool's name, so catalog tool ids can match tool names.
    """
    import dataclasses

    spec = GuardSpec(action, resource or tool.name, wait_for_approval=wait_for_approval)
    inner = tool.on_invoke_tool

    async def on_invoke_tool(ctx: Any, input_json: str) -> Any:
        try:
            raw = json.loads(input_json) if input_json else {}
            args = jsonable(raw if isinstance(raw, dict) else {"input": raw})
            task = current_task()
            res = str(spec.resource)
            if isinstance(task, AsyncTask):
                await task.authorize(spec.action, res, args, wait_for_approval=wait_for_approval)
            else:
                import asyncio

                await asyncio.to_thread(
                    task.authorize, spec.action, res, args, wait_for_approval=wait_for_approval
                )
        except TetherError as exc:
            return model_message(exc)
        except ValueError:
            return model_message(TetherError("the tool arguments are not JSON", code="invalid_arguments"))
        return await inner(ctx, input_json)

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)

"""Pydantic AI: tools whose every call is authorized by tether.

    from tether.sdk.integrations.pydantic_ai import tether_tool

    def refund(ticket_id: str, amount_cents: int) -> str: ...

    agent = Agent(model, tools=[tether_tool(refund, action="tool:call", resource="billing.refund")])
    with client.task(intent="billing.refund", scope=[...]):
        agent.run_sync("refund ticket T-1")

A denied call returns ``TETHER_DENIED …`` as the tool's result, so the model reads why
and the run goes on; it is not a ``ModelRetry`` (retrying a denied call cannot help).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError
from tether.sdk.guard import guard
from tether.sdk.integrations._common import context_params, model_message

if TYPE_CHECKING:
    from pydantic_ai import Tool

__all__ = ["tether_tool"]


def tether_tool(
    fn: Callable[..., Any],
    *,
    action: str,
    resource: str | Callable[..., str],
    arguments: Sequence[str] | Callable[..., Mapping[str, Any]] | None = None,
    wait_for_approval: float | None = None,
    **tool_kwargs: Any,
) -> Tool[Any]:
    """A ``pydantic_ai.Tool`` for ``fn`` that asks tether before each call.

    The JSON schema the model sees is built from ``fn`` itself; only the call goes through
    the guard. ``RunContext`` parameters are passed through and never sent to policy.
    """
    from pydantic_ai import Tool

    guarded = guard(
        action,
        resource,
        arguments=arguments,
        wait_for_approval=wait_for_approval,
        exclude=context_params(fn, ("RunContext",)),
    )(fn)
    is_async = inspect.iscoroutinefunction(fn)

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            if is_async:
                return await guarded(*args, **kwargs)
            # to_thread copies the context, so the current task follows the call.
            return await asyncio.to_thread(guarded, *args, **kwargs)
        except TetherError as exc:
            return model_message(exc)

    tool: Tool[Any] = Tool(fn, **tool_kwargs)
    tool.function_schema = dataclasses.replace(tool.function_schema, function=call, is_async=True)
    tool.function = call
    return tool

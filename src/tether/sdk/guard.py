"""``@guard``: one decorator that makes a tool function ask the broker before it runs.

    @guard(action="tool:call", resource="billing.refund", wait_for_approval=60)
    def refund(ticket_id: str, amount_cents: int) -> str: ...

Each call is authorized in the current task (see :func:`tether.sdk.current_task`) with
the call's arguments passed to policy (``context.call`` in Cedar), so a policy can say
"refunds must name a ticket". No task, a deny, an unreachable broker: the function does
not run (fail closed). Works for ``def`` and ``async def``; inside the call,
:func:`current_decision` gives the allow decision and its credential.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import enum
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from tether.errors import InvalidRequest
from tether.sdk.errors import NoActiveTask
from tether.sdk.models import Decision
from tether.sdk.task import AsyncTask, Task, current_task

__all__ = ["GuardSpec", "current_decision", "guard", "jsonable"]

F = TypeVar("F", bound=Callable[..., Any])
_decision: contextvars.ContextVar[Decision | None] = contextvars.ContextVar("tether_decision", default=None)
_MAX_DEPTH = 16


def current_decision() -> Decision:
    """The allow decision of the guarded call running now (its credential, its id)."""
    d = _decision.get()
    if d is None:
        raise NoActiveTask("no guarded call is running here", code="no_active_decision")
    return d


def jsonable(value: Any, where: str = "argument", depth: int = 0) -> Any:
    """Arguments go to policy as JSON; anything else is refused rather than guessed at."""
    if depth > _MAX_DEPTH:
        raise InvalidRequest(f"`{where}` is nested too deeply", code="argument_not_serializable")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidRequest(f"`{where}` is not a finite number", code="argument_not_serializable")
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value, where, depth + 1)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return jsonable(dump(mode="json"), where, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), where, depth + 1)
    raise InvalidRequest(
        f"`{where}` ({type(value).__name__}) cannot be sent to policy; pick the "
        "arguments with `guard(arguments=[...])` or `exclude=`",
        code="argument_not_serializable",
    )


@dataclass(frozen=True, slots=True)
class GuardSpec:
    """What a guard asks for; integrations read it from ``fn.__tether_guard__``."""

    action: str
    resource: str | Callable[..., str]
    arguments: Sequence[str] | Callable[..., Mapping[str, Any]] | None = None
    exclude: tuple[str, ...] = ()
    wait_for_approval: float | None = None

    def request(
        self, signature: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """(resource, arguments for policy) of one call."""
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = {
            k: v for k, v in bound.arguments.items() if k not in ("self", "cls") and k not in self.exclude
        }
        flat: dict[str, Any] = {}
        for name, value in values.items():  # **kwargs parameters spread into the call
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                flat.update(value)
            elif signature.parameters[name].kind is not inspect.Parameter.VAR_POSITIONAL:
                flat[name] = value
        resource = self.resource(**flat) if callable(self.resource) else self.resource
        if callable(self.arguments):
            chosen = dict(self.arguments(**flat))
        elif self.arguments is not None:
            chosen = {k: flat[k] for k in self.arguments if k in flat}
        else:
            chosen = flat
        return str(resource), {k: jsonable(v, k) for k, v in chosen.items()}


def guard(
    action: str,
    resource: str | Callable[..., str],
    *,
    arguments: Sequence[str] | Callable[..., Mapping[str, Any]] | None = None,
    exclude: Sequence[str] = (),
    wait_for_approval: float | None = None,
) -> Callable[[F], F]:
    """Authorize every call of the decorated function in the current task.

    ``resource`` may be a function of the call's arguments. ``arguments`` picks what
    policy sees (names, or a function returning a mapping); by default every argument
    except ``exclude``. ``wait_for_approval`` (seconds) waits for a human instead of
    raising ``ApprovalRequired`` at once.
    """
    spec = GuardSpec(action, resource, arguments, tuple(exclude), wait_for_approval)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                task = current_task()
                res, call_args = spec.request(signature, args, kwargs)
                if isinstance(task, AsyncTask):
                    d = await task.authorize(action, res, call_args, wait_for_approval=wait_for_approval)
                else:
                    d = await asyncio.to_thread(
                        task.authorize, action, res, call_args, wait_for_approval=wait_for_approval
                    )
                reset = _decision.set(d)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _decision.reset(reset)

            wrapper: Callable[..., Any] = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                task = current_task()
                res, call_args = spec.request(signature, args, kwargs)
                if isinstance(task, Task):
                    d = task.authorize(action, res, call_args, wait_for_approval=wait_for_approval)
                else:
                    d = task.authorize_blocking(action, res, call_args, wait_for_approval=wait_for_approval)
                reset = _decision.set(d)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _decision.reset(reset)

            wrapper = sync_wrapper
        wrapper.__tether_guard__ = spec  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate

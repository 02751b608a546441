"""Pure builders for the Cedar ``context`` records of ``tether.cedarschema``.

The broker and the YAML policy cases both build contexts here, so a case exercises
exactly the shape a live decision sees. Builders check types (Cedar's ``Long`` is a
signed 64-bit integer; a ``bool`` is not a number here) and raise
:class:`~tether.errors.InvalidRequest` with code ``context_invalid`` naming the field.

The engine adds ``context.call`` itself; builders never set it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tether.errors import InvalidRequest
from tether.model import Task

__all__ = [
    "LIFECYCLE_ACTIONS",
    "action_context",
    "approval_context",
    "context_from_mapping",
    "drift_context",
    "grant_context",
    "lifecycle_context",
    "request_context",
    "risk_context",
    "task_context",
    "task_context_from_task",
]

# Actions whose context is LifecycleContext (a grant being asked for) rather than
# ActionContext (an action inside a running task).
LIFECYCLE_ACTIONS = frozenset({"task:open", "task:delegate"})

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_DRIFT_FIELDS = frozenset({"score", "new_action_for_intent", "cold_start", "baseline_tasks"})
_CODE = "context_invalid"

Record = dict[str, Any]


def _long(field: str, value: object, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"`{field}` must be an integer", code=_CODE, field=field)
    if not max(minimum, _LONG_MIN) <= value <= _LONG_MAX:
        raise InvalidRequest(f"`{field}` is out of range", code=_CODE, field=field)
    return value


def _str(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"`{field}` must be a string", code=_CODE, field=field)
    return value


def _bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{field}` must be true or false", code=_CODE, field=field)
    return value


def task_context(
    *,
    intent: str,
    id: str = "",  # the schema field name; shadowing the builtin is harmless here
    depth: int = 0,
    age_seconds: int = 0,
    remaining_seconds: int = 0,
    delegator: str | None = None,
    root_agent: str = "",
) -> Record:
    """``TaskContext``. ``id`` is empty while a task is being opened."""
    return {
        "id": _str("task.id", id),
        "intent": _str("task.intent", intent),
        "depth": _long("task.depth", depth),
        "age_seconds": _long("task.age_seconds", age_seconds),
        "remaining_seconds": _long("task.remaining_seconds", remaining_seconds),
        # Cedar records have no optional-by-null: a flag plus an empty string.
        "has_delegator": delegator is not None,
        "delegator": "" if delegator is None else _str("task.delegator", delegator),
        "root_agent": _str("task.root_agent", root_agent),
    }


def task_context_from_task(task: Task, now: float, *, root_agent: str | None = None) -> Record:
    """``TaskContext`` of a live task at time ``now`` (POSIX seconds).

    ``root_agent`` defaults to the far end of the delegation chain, else the agent.
    """
    if root_agent is None:
        root_agent = task.act_chain[-1] if task.act_chain else task.agent
    return task_context(
        id=task.id,
        intent=task.intent,
        depth=task.depth,
        age_seconds=max(0, int(now - task.created_at)),
        remaining_seconds=max(0, int(task.expires_at - now)),
        delegator=None if task.delegator is None else task.delegator.subject,
        root_agent=root_agent,
    )


def drift_context(
    *, score: int = 0, new_action_for_intent: bool = False, cold_start: bool = True, baseline_tasks: int = 0
) -> Record:
    """``DriftContext`` (see :mod:`tether.policy.drift`); the default is a cold start."""
    if not 0 <= _long("risk.drift.score", score) <= 100:
        raise InvalidRequest("`risk.drift.score` must be 0-100", code=_CODE, field="risk.drift.score")
    return {
        "score": score,
        "new_action_for_intent": _bool("risk.drift.new_action_for_intent", new_action_for_intent),
        "cold_start": _bool("risk.drift.cold_start", cold_start),
        "baseline_tasks": _long("risk.drift.baseline_tasks", baseline_tasks),
    }


def risk_context(
    *,
    calls_last_minute: int = 0,
    first_use: bool = False,
    max_sensitivity_read: int = 0,
    drift: Mapping[str, Any] | None = None,
) -> Record:
    """``RiskContext``; the defaults mean "no signal", not "safe"."""
    if drift is not None and not isinstance(drift, Mapping):
        raise InvalidRequest("`risk.drift` must be a mapping", code=_CODE, field="risk.drift")
    unknown = sorted(set(drift or {}) - _DRIFT_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"unknown field `risk.drift.{unknown[0]}`", code=_CODE, field=f"risk.drift.{unknown[0]}"
        )
    return {
        "calls_last_minute": _long("risk.calls_last_minute", calls_last_minute),
        "first_use": _bool("risk.first_use", first_use),
        "max_sensitivity_read": _long("risk.max_sensitivity_read", max_sensitivity_read),
        "drift": drift_context(**(drift or {})),
    }


def request_context(*, method: str = "", path: str = "") -> Record:
    """``RequestContext``; empty strings when the action is not an HTTP request."""
    return {"method": _str("request.method", method).upper(), "path": _str("request.path", path)}


def approval_context(*, granted: bool = False) -> Record:
    return {"granted": _bool("approval.granted", granted)}


def grant_context(*, action: str, ttl_seconds: int = 0, child_agent: str = "") -> Record:
    """``GrantContext``: the grant a task:open or task:delegate asks for."""
    return {
        "action": _str("grant.action", action),
        "ttl_seconds": _long("grant.ttl_seconds", ttl_seconds),
        "child_agent": _str("grant.child_agent", child_agent),
    }


def action_context(
    *,
    task: Record,
    risk: Record,
    environment: str,
    request: Record | None = None,
    approval: Record | None = None,
) -> Record:
    """``ActionContext``. ``risk`` and ``environment`` have no default on purpose: the
    taint and isolation rules read them, so a caller must decide what they are."""
    return {
        "task": task,
        "risk": risk,
        "request": request if request is not None else request_context(),
        "approval": approval if approval is not None else approval_context(),
        "environment": _str("environment", environment),
    }


def lifecycle_context(
    *, task: Record, grant: Record, environment: str, approval: Record | None = None
) -> Record:
    """``LifecycleContext`` for task:open and task:delegate."""
    return {
        "task": task,
        "grant": grant,
        "environment": _str("environment", environment),
        "approval": approval if approval is not None else approval_context(),
    }


def _section(partial: Mapping[str, Any], name: str, allowed: frozenset[str]) -> dict[str, Any]:
    raw = partial.get(name) or {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"`{name}` must be a mapping", code=_CODE, field=name)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field `{name}.{unknown[0]}`", code=_CODE, field=f"{name}.{unknown[0]}")
    return dict(raw)


_TASK_FIELDS = frozenset(
    {"id", "intent", "depth", "age_seconds", "remaining_seconds", "delegator", "root_agent"}
)
_RISK_FIELDS = frozenset({"calls_last_minute", "first_use", "max_sensitivity_read", "drift"})
_REQUEST_FIELDS = frozenset({"method", "path"})
_APPROVAL_FIELDS = frozenset({"granted"})
_GRANT_FIELDS = frozenset({"action", "ttl_seconds", "child_agent"})
_ACTION_SECTIONS = frozenset({"task", "risk", "request", "approval", "environment"})
_LIFECYCLE_SECTIONS = frozenset({"task", "grant", "approval", "environment"})


def context_from_mapping(action: str, partial: Mapping[str, Any]) -> Record:
    """A full context for ``action`` from a partial, plain mapping (e.g. YAML).

    Missing fields take the builders' defaults, except ``environment`` and
    ``task.intent``, which must be given. Unknown fields are refused so that a typo
    in a test case cannot silently test something else.
    """
    lifecycle = action in LIFECYCLE_ACTIONS
    allowed = _LIFECYCLE_SECTIONS if lifecycle else _ACTION_SECTIONS
    unknown = sorted(set(partial) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown context field `{unknown[0]}` for action `{action}`", code=_CODE, field=unknown[0]
        )
    if "environment" not in partial:
        raise InvalidRequest("missing context field `environment`", code=_CODE, field="environment")
    task_raw = _section(partial, "task", _TASK_FIELDS)
    if "intent" not in task_raw:
        raise InvalidRequest("missing context field `task.intent`", code=_CODE, field="task.intent")
    task = task_context(**task_raw)
    approval = approval_context(**_section(partial, "approval", _APPROVAL_FIELDS))
    environment = partial["environment"]
    if lifecycle:
        grant_raw = _section(partial, "grant", _GRANT_FIELDS)
        grant = grant_context(**{"action": "", **grant_raw})
        return lifecycle_context(task=task, grant=grant, environment=environment, approval=approval)
    return action_context(
        task=task,
        risk=risk_context(**_section(partial, "risk", _RISK_FIELDS)),
        request=request_context(**_section(partial, "request", _REQUEST_FIELDS)),
        approval=approval,
        environment=environment,
    )

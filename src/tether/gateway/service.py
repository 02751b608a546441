"""Broker-side use cases of enforcement points: list filtering and call records.

Pure of any web framework: :mod:`tether.gateway.wiring` exposes them over HTTP to
remote gateways, :class:`~tether.gateway.authorizer.LocalAuthorizer` calls them directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tether import actions
from tether.audit import event as ev
from tether.errors import InvalidRequest, Unauthenticated
from tether.identity.spiffe_id import parse_spiffe_id
from tether.model import Grant, Outcome
from tether.policy.context import (
    action_context,
    approval_context,
    request_context,
    risk_context,
    task_context_from_task,
)
from tether.policy.engine import NO_PERMIT, PolicyPrincipal, PolicyRequest
from tether.store import repo

#: Event types an enforcement point may append; nothing else goes through this door.
CALL_EVENTS = frozenset({ev.CALL_FORWARDED, ev.CALL_RESULT})
_MAX_RESOURCES = 512


def visible(rt: Any, token: str, action: str, resources: Sequence[str]) -> list[str]:
    """The resources a task could be allowed ``action`` on, for filtering a tool list.

    Within scope, and not denied for want of any permit. Evaluated without arguments:
    a forbid that looks at arguments still leaves the tool listed (the call itself is
    decided with its arguments), while a resource no permit covers is hidden. No
    decision is recorded: listing is not acting.
    """
    if action not in actions.SCOPED:
        raise InvalidRequest(f"unknown action `{action}`", code="unknown_action", field="action")
    if len(resources) > _MAX_RESOURCES:
        raise InvalidRequest(f"at most {_MAX_RESOURCES} resources", code="invalid_field", field="resources")
    broker = rt.broker
    claims = broker.verify_token(token)
    now = broker.clock()
    with rt.db.read() as conn:
        task = repo.get_task(conn, claims.task_id)
        if task is None or task.agent != claims.agent:
            raise Unauthenticated("the task token names no task of this agent", code="token_unknown_task")
        if not task.is_active(now):
            return []
        taint = max(0, repo.max_sensitivity_read(conn, task.id))
    principal = PolicyPrincipal(task.agent, parse_spiffe_id(task.agent).trust_domain, task.attestation,
                                dict(task.agent_attrs))
    ctx = action_context(task=task_context_from_task(task, now), environment=rt.settings.environment,
                         risk=risk_context(max_sensitivity_read=taint), request=request_context(),
                         approval=approval_context(granted=False))
    out: list[str] = []
    for rid in resources:
        resource = rt.catalog.get(rid) if isinstance(rid, str) else None
        if resource is None or not rt.catalog.grant_within(Grant(action, rid), task.scope):
            continue
        result = rt.engine.decide(PolicyRequest(principal=principal, action=action, resource=resource,
                                                context=ctx, arguments={}))
        if result.outcome is Outcome.DENY and result.code == NO_PERMIT:
            continue
        out.append(rid)
    return out


def record_call(rt: Any, type_: str, task: Mapping[str, Any] | None, decision_id: str | None,
                lease_id: str | None, trace_id: str | None, payload: dict[str, Any],
                enforcer: str | None = None) -> None:
    """Append the record of one forwarded call, linked to the decision that let it through."""
    if type_ not in CALL_EVENTS:
        raise InvalidRequest(f"`{type_}` is not a call event", code="invalid_field", field="type")
    fields: dict[str, Any] = {}
    for key in ("task_id", "root_task_id", "parent_task_id", "agent"):
        value = (task or {}).get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"`task.{key}` must be a string", code="invalid_field", field=f"task.{key}")
        fields[key] = value
    if enforcer:
        payload = {**payload, "enforcer": enforcer}
    with rt.audit.unit() as u:
        u.emit(type_, payload, decision_id=decision_id, lease_id=lease_id, trace_id=trace_id, **fields)

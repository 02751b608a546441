"""Broker-side use cases of enforcement points: list filtering and call records.

Pure of any web framework: :mod:`tether.gateway.wiring` exposes them over HTTP to
remote gateways, :class:`~tether.gateway.authorizer.LocalAuthorizer` calls them directly.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

from tether import actions
from tether.arguments import ArgSpec
from tether.audit import event as ev
from tether.catalog import Catalog
from tether.errors import InvalidRequest, Unauthenticated
from tether.identity.spiffe_id import parse_spiffe_id
from tether.model import AuthorizeRequest, Grant, Outcome
from tether.policy.context import (
    action_context,
    approval_context,
    request_context,
    risk_context,
    task_context_from_task,
)
from tether.policy.engine import PolicyEngine, PolicyPrincipal, PolicyRequest
from tether.policy.loader import PolicyBundle
from tether.seams import BrokerParts
from tether.store import repo

#: Event types an enforcement point may append; nothing else goes through this door.
CALL_EVENTS = frozenset({ev.CALL_FORWARDED, ev.CALL_RESULT})
_MAX_RESOURCES = 512


# The permits-only engine of each broker engine, rebuilt when the policy set or catalog
# changes; keyed weakly by the engine so each runtime has its own and none outlives it.
_PERMITS: weakref.WeakKeyDictionary[PolicyEngine, tuple[str, Catalog | None, PolicyEngine]] = (
    weakref.WeakKeyDictionary()
)


def visible(
    rt: BrokerParts,
    token: str,
    action: str,
    resources: Sequence[str],
    proof: Any = None,
    audience: str | None = None,
) -> list[str]:
    """The resources a task could be allowed ``action`` on, for filtering a tool list.

    Within scope, and matched by some ``permit`` when evaluated without arguments and
    without the forbids: a forbid may depend on the call's arguments, so it cannot hide
    a tool here (the call itself is decided with its arguments and says why it was
    refused). Write argument rules as ``forbid … unless`` so their tools stay listed; a
    ``permit`` that requires arguments hides its tool. No decision is recorded: listing
    is not acting.
    """
    if action not in actions.SCOPED:
        raise InvalidRequest(f"unknown action `{action}`", code="unknown_action", field="action")
    if len(resources) > _MAX_RESOURCES:
        raise InvalidRequest(f"at most {_MAX_RESOURCES} resources", code="invalid_field", field="resources")
    broker = rt.broker
    claims = broker.verify_token(token, proof, audience)
    now = broker.clock()
    with rt.db.read() as conn:
        task = repo.get_task(conn, claims.task_id)
        if task is None or task.agent != claims.agent:
            raise Unauthenticated("the task token names no task of this agent", code="token_unknown_task")
        if not task.is_active(now):
            return []
        taint = max(0, repo.max_sensitivity_read(conn, task.id))
    principal = PolicyPrincipal(
        task.agent, parse_spiffe_id(task.agent).trust_domain, task.attestation, dict(task.agent_attrs)
    )
    ctx = action_context(
        task=task_context_from_task(task, now),
        environment=rt.settings.environment,
        risk=risk_context(max_sensitivity_read=taint),
        request=request_context(),
        approval=approval_context(granted=False),
    )
    permits = _permits_engine(rt)
    out: list[str] = []
    for rid in resources:
        resource = rt.catalog.get(rid) if isinstance(rid, str) else None
        if resource is None or not rt.catalog.grant_within(Grant(action, rid), task.scope):
            continue
        result = permits.decide(
            PolicyRequest(
                principal=principal,
                action=action,
                resource=resource,
                context=ctx,
                arguments={},
                check_arguments=False,
            )
        )
        if result.outcome is Outcome.ALLOW:
            out.append(rid)
    return out


def check_token(rt: BrokerParts, token: str, audience: str | None) -> dict[str, Any]:
    """Is this token good for a request to a protected resource right now: signature,
    expiry, audience (``audience``: the resource's URI), and its task still active.

    The OAuth front door of a gateway asks this before any MCP message is read, so that a
    closed task's token is a ``401 invalid_token`` (which makes an OAuth client sign in
    again) rather than a tool error. The sender constraint is not checked here: a DPoP
    proof is single use, and the call's own decision checks it.
    """
    broker = rt.broker
    try:
        claims = broker.tokens.verify(token, now=broker.clock(), audience=audience)
    except Unauthenticated as exc:
        broker._audit_rejected(exc, broker_request(audience))
        raise
    with rt.db.read() as conn:
        task = repo.get_task(conn, claims.task_id)
    if task is None or task.agent != claims.agent or not task.is_active(broker.clock()):
        dead = Unauthenticated(
            "the task of this token is closed, expired or revoked; sign in again", code="task_not_active"
        )
        broker._audit_rejected(dead, broker_request(audience), task)
        raise dead
    return {
        "task_id": task.id,
        "agent": task.agent,
        "scope": [g.to_dict() for g in task.scope],
        "expires_at": task.expires_at,
    }


def broker_request(audience: str | None) -> AuthorizeRequest:
    """The request an audit record of a refused token names: the resource it was sent to."""
    return AuthorizeRequest(action="token:check", resource=(audience or "")[:256], audience=audience)


def _permits_engine(rt: BrokerParts) -> PolicyEngine:
    """An engine holding only the permits of the policy set in force (cached per version)."""
    bundle, catalog = rt.engine.bundle, rt.engine.catalog
    cached = _PERMITS.get(rt.engine)
    if cached is not None and cached[0] == bundle.version and cached[1] is catalog:
        return cached[2]
    engine = PolicyEngine()
    if catalog is not None:
        engine.set_catalog(catalog)
    if bundle.policy_set is not None:
        tree = bundle.policy_set.to_pst()
        # Templates and their links are left out: a permit template hides its tools here.
        kept = {pid: p for pid, p in tree.static_policies.items() if p.effect == "permit"}
        policy_set = cedarpy.PolicySet.from_pst(
            type(tree)(templates={}, static_policies=kept, template_links=())
        )
        engine.set_bundle(
            PolicyBundle(
                policy_set=policy_set,
                version=bundle.version,
                policies={pid: bundle.policies[pid] for pid in kept},
            )
        )
    _PERMITS[rt.engine] = (bundle.version, catalog, engine)
    return engine


def tool_arguments(rt: Any, resources: Sequence[str]) -> dict[str, dict[str, ArgSpec]]:
    """The typed arguments the catalog declares for each of ``resources`` (those with any),
    so a gateway can resolve symlinks and forward the canonical values it had checked."""
    if len(resources) > _MAX_RESOURCES:
        raise InvalidRequest(f"at most {_MAX_RESOURCES} resources", code="invalid_field", field="resources")
    out: dict[str, dict[str, ArgSpec]] = {}
    for rid in resources:
        resource = rt.catalog.get(rid) if isinstance(rid, str) else None
        if resource is not None and resource.arguments:
            out[rid] = dict(resource.arguments)
    return out


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One forwarded call's audit event, checked and ready to append."""

    type: str
    fields: Mapping[str, Any]  # task_id, root_task_id, parent_task_id, agent
    decision_id: str | None
    lease_id: str | None
    trace_id: str | None
    payload: dict[str, Any]


def call_record(
    type_: str,
    task: Mapping[str, Any] | None,
    decision_id: str | None,
    lease_id: str | None,
    trace_id: str | None,
    payload: dict[str, Any],
    enforcer: str | None = None,
) -> CallRecord:
    """Check one call record as an enforcement point sent it (``InvalidRequest`` if it is bad)."""
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
    return CallRecord(type_, fields, decision_id, lease_id, trace_id, payload)


def append_calls(rt: BrokerParts, records: Sequence[CallRecord]) -> None:
    """Append call records in one audit unit: all of them commit, or none."""
    with rt.audit.unit() as u:
        for r in records:
            u.emit(
                r.type,
                r.payload,
                decision_id=r.decision_id,
                lease_id=r.lease_id,
                trace_id=r.trace_id,
                **r.fields,
            )


def record_call(
    rt: BrokerParts,
    type_: str,
    task: Mapping[str, Any] | None,
    decision_id: str | None,
    lease_id: str | None,
    trace_id: str | None,
    payload: dict[str, Any],
    enforcer: str | None = None,
) -> None:
    """Append the record of one forwarded call, linked to the decision that let it through."""
    append_calls(rt, [call_record(type_, task, decision_id, lease_id, trace_id, payload, enforcer)])

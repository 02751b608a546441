"""The core admin operations (tasks, revocation, approvals, policy, audit)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.audit.verify import verify_chains
from tether.catalog import load_catalog
from tether.drift import task_drift
from tether.errors import InvalidRequest, TetherError
from tether.model import Approval, Delegator
from tether.server.admin import OperationTable, Operator
from tether.server.app import task_view
from tether.store.deadline import unbounded

if TYPE_CHECKING:
    from tether.runtime import Runtime

#: This module's admin operations (``Runtime.operations`` holds them once built).
OPERATIONS = OperationTable()
operation = OPERATIONS.operation


def approval_view(a: Approval) -> dict[str, Any]:
    return {
        "approval_id": a.id,
        "task_id": a.task_id,
        "action": a.action,
        "resource": a.resource,
        "args_digest": a.args_digest,
        "state": a.state.value,
        "reason": a.reason,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "decided_by": a.decided_by,
    }


def _str_arg(args: dict[str, Any], key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise InvalidRequest(f"missing argument `{key}`", code="missing_field", field=key)
    return v


@operation("status")
def status(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return {
        "node_id": rt.settings.node_id,
        "environment": rt.settings.environment,
        "policy_version": rt.engine.bundle.version,
        "store": rt.db.dialect,
        "listen": rt.settings.listen,
        "audience": rt.settings.broker_audience,
    }


@operation("task.list")
def task_list(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return [task_view(t) for t in rt.broker.list_tasks(args.get("state"), args.get("agent"))]


@operation("task.show")
def task_show(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    task, children = rt.broker.get_task(_str_arg(args, "task_id"))
    view = task_view(task, children)
    with rt.db.read() as conn:
        view["drift"] = task_drift(conn, task)
    return view


@operation("task.close")
def task_close(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return {"closed": rt.broker.close_task(_str_arg(args, "task_id"), by=op.name)}


@operation("revoke")
def revoke(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    """``max_batches``: stop after that many committed batches and say how many trees remain
    (the CLI calls again until none do, showing progress; an interrupted run is resumed)."""
    delegator = None
    if args.get("delegator"):
        delegator = Delegator(str(args["delegator"]), str(args.get("issuer") or ""))
    limit = args.get("max_batches")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidRequest("`max_batches` must be a positive integer", code="invalid_request",
                             field="max_batches")  # fmt: skip
    task_id, agent, everything = args.get("task_id"), args.get("agent"), bool(args.get("all"))
    ended = rt.broker.revoke(task_id=task_id, agent=agent, delegator=delegator, everything=everything,
                             by=op.name, max_batches=limit)  # fmt: skip
    remaining = 0
    if limit is not None and not task_id:
        remaining = len(rt.broker.revoke_targets(agent=agent, delegator=delegator, everything=everything))
    return {"revoked": ended, "remaining": remaining}


@operation("policy.reload")
def policy_reload(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    result: dict[str, Any] = {"policy_version": rt.reload_policy(strict=args.get("strict") is True)}
    result["warnings"] = [w.to_dict() for w in rt.policy_warnings]
    # The catalog (services, intents) is read once at start and is shared by the broker,
    # the engine, the connectors and the gateways: a reload does not swap it under them,
    # so say plainly when the file on disk is no longer the one in force.
    try:
        changed = load_catalog(rt.settings.catalog_path) != rt.catalog
        problem = ""
    except TetherError as exc:
        changed, problem = True, exc.message
    if changed:
        result["restart_needed"] = True
        result["message"] = (
            f"`{rt.settings.catalog_path.name}` changed since the broker started"
            + (f" and does not load ({problem})" if problem else "")
            + "; policies still see the catalog loaded at start: restart the broker to use it"
        )
    return result


@operation("approvals.list")
def approvals_list(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return [approval_view(a) for a in rt.broker.list_approvals(args.get("state"))]


@operation("approvals.approve")
def approvals_approve(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return approval_view(rt.broker.decide_approval(_str_arg(args, "approval_id"), grant=True, by=op.name))


@operation("approvals.reject")
def approvals_reject(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return approval_view(rt.broker.decide_approval(_str_arg(args, "approval_id"), grant=False, by=op.name))


@operation("audit.verify")
def audit_verify(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    with unbounded(), rt.db.read() as conn:  # a whole-log read: not under the request budget
        return verify_chains(conn).to_dict()


def _key_view(k: Any) -> dict[str, Any]:
    return {"kid": k.kid, "created_at": k.created_at, "retires_at": k.retires_at, "expires_at": k.expires_at}


@operation("keys.list")
def keys_list(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    rt.keys.refresh()
    return [_key_view(k) for k in rt.keys.list()]


@operation("keys.rotate")
def keys_rotate(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    key = rt.keys.create()
    with rt.audit.unit() as u:
        u.emit("key.rotated", {"kid": key.kid, "by": op.name})
    return _key_view(key)

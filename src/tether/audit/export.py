"""Exports for other tools: JSON Lines (re-verifiable) and OCSF API Activity for SIEMs.

OpenTelemetry spans live in :mod:`tether.audit.otel` (the SDK is an optional extra).

OCSF mapping (schema 1.3.0, class API Activity 6003, category Application Activity 6):
every event becomes one API Activity; the agent is ``actor.app_uid`` (its SPIFFE ID), the
human delegator ``actor.user``, the task ``actor.session``; a decision carries its
outcome in ``actor.authorizations[].decision`` and ``status_id`` (allow → Success, deny
→ Failure, approval required → Other). The full Tether event (payload, hashes) rides in
``unmapped`` so nothing is lost. ``ocsf_api_activity.schema.json`` (shipped beside this
module) is the subset of the OCSF class the mapping promises; tests validate against it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any

from tether.audit import event as ev
from tether.audit.event import Event
from tether.audit.trace import summarize

OCSF_VERSION = "1.3.0"
API_ACTIVITY = 6003
APPLICATION_ACTIVITY = 6

CREATE, READ, UPDATE, DELETE, OTHER = 1, 2, 3, 4, 99
_ACTIVITY = {
    ev.TASK_OPENED: CREATE,
    ev.TASK_DELEGATED: CREATE,
    ev.APPROVAL_REQUESTED: CREATE,
    ev.CREDENTIAL_MINTED: CREATE,
    ev.WORKLOAD_ATTESTED: CREATE,
    ev.APPROVAL_GRANTED: UPDATE,
    ev.APPROVAL_REJECTED: UPDATE,
    ev.APPROVAL_EXPIRED: UPDATE,
    ev.POLICY_LOADED: UPDATE,
    ev.TOOL_DEFINITION_CHANGED: UPDATE,
    ev.KEY_ROTATED: UPDATE,
    ev.TASK_CLOSED: DELETE,
    ev.TASK_EXPIRED: DELETE,
    ev.TASK_REVOKED: DELETE,
    ev.CREDENTIAL_REVOKED: DELETE,
}
_ACTIVITY_NAME = {CREATE: "Create", READ: "Read", UPDATE: "Update", DELETE: "Delete", OTHER: "Other"}
# Severity: informational unless the event is something a SOC would look at.
_SEVERITY = {
    ev.CREDENTIAL_IRREVOCABLE: 4,
    ev.TASK_REVOKED: 3,
    ev.POLICY_RELOAD_FAILED: 3,
    ev.TOOL_DEFINITION_CHANGED: 3,
    ev.APPROVAL_REJECTED: 2,
}
_SEVERITY_NAME = {1: "Informational", 2: "Low", 3: "Medium", 4: "High"}


def _product_version() -> str:
    try:
        return version("tether")
    except PackageNotFoundError:  # running from a source tree
        return "0"


def to_jsonl(events: Iterable[Event], out: IO[str]) -> int:
    """One event per line, every field including the hashes (re-verifiable offline)."""
    n = 0
    for e in events:
        out.write(json.dumps(e.to_dict(), sort_keys=True, ensure_ascii=False) + "\n")
        n += 1
    return n


def to_ocsf(e: Event, *, product_version: str | None = None) -> dict[str, Any]:
    p = e.payload
    activity = _ACTIVITY.get(e.type, OTHER)
    severity = _SEVERITY.get(e.type, 1)
    status_id, status = 1, "Success"
    actor: dict[str, Any] = {
        "app_uid": e.agent or f"tether:{e.chain}",
        "app_name": e.agent.rsplit("/", 1)[-1] if e.agent else "tether",
    }
    if e.delegator:
        actor["user"] = {"uid": e.delegator, "type_id": 1, "type": "User"}
    if e.task_id:
        actor["session"] = {"uid": e.task_id}
    if e.type == ev.DECISION:
        outcome = str(p.get("outcome", "deny"))
        status_id, status = {"allow": (1, "Success"), "deny": (2, "Failure")}.get(outcome, (99, outcome))
        severity = 1 if outcome == "allow" else 2
        actor["authorizations"] = [
            {"decision": outcome, "policy": {"uid": str(p.get("policy_version", "")), "name": "tether"}}
        ]
    operation = str(p.get("action") or e.type)
    out: dict[str, Any] = {
        "class_uid": API_ACTIVITY,
        "class_name": "API Activity",
        "category_uid": APPLICATION_ACTIVITY,
        "category_name": "Application Activity",
        "activity_id": activity,
        "activity_name": _ACTIVITY_NAME[activity] if activity != OTHER else e.type,
        "type_uid": API_ACTIVITY * 100 + activity,
        "type_name": f"API Activity: {_ACTIVITY_NAME[activity] if activity != OTHER else 'Other'}",
        "time": int(e.ts * 1000),
        "severity_id": severity,
        "severity": _SEVERITY_NAME[severity],
        "status_id": status_id,
        "status": status,
        "message": summarize(e),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": f"{e.chain}:{e.seq}",
            "event_code": e.type,
            "log_name": "tether.audit",
            "correlation_uid": e.root_task_id or e.task_id,
            "product": {
                "name": "Tether",
                "vendor_name": "Tether",
                "version": product_version or _product_version(),
            },
        },
        "actor": actor,
        "api": {
            "operation": operation,
            "service": {"name": "tether"},
            **({"request": {"uid": e.decision_id}} if e.decision_id else {}),
        },
        "src_endpoint": {"uid": e.agent or f"tether:{e.chain}", "name": e.agent or "tether"},
        "unmapped": {"tether": e.to_dict()},
    }
    if p.get("code") and e.type == ev.DECISION:
        out["status_code"] = str(p["code"])
    if p.get("resource"):
        out["resources"] = [{"uid": str(p["resource"]), "type": "tether.resource"}]
    out["metadata"] = {k: v for k, v in out["metadata"].items() if v is not None}
    return out


def to_ocsf_lines(events: Iterable[Event], out: IO[str]) -> int:
    n = 0
    pv = _product_version()
    for e in events:
        out.write(json.dumps(to_ocsf(e, product_version=pv), ensure_ascii=False) + "\n")
        n += 1
    return n

"""The audit event: a versioned record, canonical JSON, SHA-256 chained.

``hash = sha256(canonical(event without "hash"))`` where the event includes
``prev_hash``; so editing, deleting, inserting or reordering any event breaks the link
to every later one. Canonical JSON: keys sorted, no whitespace, UTF-8, no NaN.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from json.encoder import encode_basestring
from typing import Any

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64

# Event types. Names are part of the schema: add, never rename.
WORKLOAD_ATTESTED = "workload.attested"
WORKLOAD_REGISTERED = "workload.registered"
WORKLOAD_REMOVED = "workload.removed"
TASK_OPENED = "task.opened"
TASK_DELEGATED = "task.delegated"
TASK_CLOSED = "task.closed"
TASK_EXPIRED = "task.expired"
TASK_REVOKED = "task.revoked"
DECISION = "decision"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_GRANTED = "approval.granted"
APPROVAL_REJECTED = "approval.rejected"
CREDENTIAL_MINTED = "credential.minted"
CREDENTIAL_REVOKED = "credential.revoked"
CREDENTIAL_IRREVOCABLE = "credential.irrevocable"
CALL_FORWARDED = "call.forwarded"
CALL_RESULT = "call.result"
POLICY_LOADED = "policy.loaded"
POLICY_RELOAD_FAILED = "policy.reload_failed"
TOOL_DEFINITION_CHANGED = "tool.definition_changed"
KEY_ROTATED = "key.rotated"
# The operator console: a human signed in, acted, or was refused; a notification failed.
CONSOLE_SIGNIN = "console.signin"
CONSOLE_ACTION = "console.action"
CONSOLE_REFUSED = "console.refused"
NOTIFY_FAILED = "notify.failed"
# Legacy secrets brought under the broker (`tether secrets import|rotate`).
SECRET_IMPORTED = "secret.imported"  # noqa: S105 (an event type)
SECRET_ROTATED = "secret.rotated"  # noqa: S105 (an event type)
SECRET_ROTATION_FAILED = "secret.rotation_failed"  # noqa: S105 (an event type)

EVENT_TYPES = frozenset(
    {
        WORKLOAD_ATTESTED,
        TASK_OPENED,
        TASK_DELEGATED,
        TASK_CLOSED,
        TASK_EXPIRED,
        TASK_REVOKED,
        DECISION,
        APPROVAL_REQUESTED,
        APPROVAL_GRANTED,
        APPROVAL_REJECTED,
        CREDENTIAL_MINTED,
        CREDENTIAL_REVOKED,
        CREDENTIAL_IRREVOCABLE,
        CALL_FORWARDED,
        CALL_RESULT,
        POLICY_LOADED,
        POLICY_RELOAD_FAILED,
        TOOL_DEFINITION_CHANGED,
        KEY_ROTATED,
        WORKLOAD_REGISTERED,
        WORKLOAD_REMOVED,
        CONSOLE_SIGNIN,
        CONSOLE_ACTION,
        CONSOLE_REFUSED,
        NOTIFY_FAILED,
        SECRET_IMPORTED,
        SECRET_ROTATED,
        SECRET_ROTATION_FAILED,
    }
)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Event:
    chain: str
    seq: int
    ts: float
    type: str
    prev_hash: str
    payload: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    root_task_id: str | None = None
    parent_task_id: str | None = None
    agent: str | None = None
    delegator: str | None = None
    decision_id: str | None = None
    lease_id: str | None = None
    trace_id: str | None = None
    v: int = SCHEMA_VERSION
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """Everything the hash covers (every field but ``hash``).

        Built field by field rather than with ``asdict``: that deep-copies the payload,
        and this runs once per event on the authorize hot path.
        """
        return {f: getattr(self, f) for f in _BODY_FIELDS}

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.body()).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_BODY_FIELDS = tuple(f.name for f in fields(Event) if f.name != "hash")

# The fields an emitter may set; the chain sets the rest.
EVENT_FIELDS = (
    "task_id",
    "root_task_id",
    "parent_task_id",
    "agent",
    "delegator",
    "decision_id",
    "lease_id",
    "trace_id",
)


def _js(value: str | None) -> str:
    return "null" if value is None else str(encode_basestring(value))


def row_hash(
    *,
    chain: str,
    seq: int,
    ts: float,
    type: str,
    prev_hash: str,
    payload_text: str,
    task_id: str | None,
    root_task_id: str | None,
    parent_task_id: str | None,
    agent: str | None,
    delegator: str | None,
    decision_id: str | None,
    lease_id: str | None,
    trace_id: str | None,
    v: int,
) -> str:
    """``Event.compute_hash`` for a stored row, without parsing its payload.

    The payload column already holds canonical JSON, so the canonical body is assembled
    around it as text (keys in sorted order). This is what makes ``verify`` fast; a test
    pins it to ``compute_hash``. A payload re-spelled in a non-canonical way (same data,
    other bytes) no longer hashes the same, which is what we want from a tamper check.
    """
    body = (
        f'{{"agent":{_js(agent)},"chain":{_js(chain)},"decision_id":{_js(decision_id)},'
        f'"delegator":{_js(delegator)},"lease_id":{_js(lease_id)},'
        f'"parent_task_id":{_js(parent_task_id)},"payload":{payload_text},'
        f'"prev_hash":{_js(prev_hash)},"root_task_id":{_js(root_task_id)},"seq":{int(seq)},'
        f'"task_id":{_js(task_id)},"trace_id":{_js(trace_id)},"ts":{float.__repr__(float(ts))},'
        f'"type":{_js(type)},"v":{int(v)}}}'
    )
    return hashlib.sha256(body.encode()).hexdigest()

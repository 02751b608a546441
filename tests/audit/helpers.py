"""Audit test helpers: drive the real broker to build task trees, tamper with raw SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from tether.audit import event as ev
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.model import Delegator, Grant, Workload
from tether.runtime import Runtime

DOMAIN = "support.example"
DELEGATOR = Delegator("alice@example.com", "https://idp.example.com")


def workload(path: str) -> Workload:
    return Workload(spiffe_id=f"spiffe://{DOMAIN}/{path}", trust_domain=DOMAIN, attestation="jwt-svid")


@dataclass
class Tree:
    """A three-level delegation tree built through the broker: orchestrator → refunder → lookup."""

    root: str
    child: str
    grandchild: str
    approval_id: str
    tokens: dict[str, str] = field(default_factory=dict)
    lease_ids: list[str] = field(default_factory=list)


def grants(*pairs: tuple[str, str]) -> tuple[Grant, ...]:
    return tuple(Grant(a, r) for a, r in pairs)


def emit_as(rt: Runtime, type_: str, task_id: str, payload: dict[str, Any], **fields: Any) -> None:
    """Emit an event the way the credentials/gateway layers do (inside a chain unit)."""
    task, _ = rt.broker.get_task(task_id)
    with rt.audit.unit() as u:
        u.emit(
            type_,
            payload,
            task_id=task.id,
            root_task_id=task.root_id,
            parent_task_id=task.parent_id,
            agent=task.agent,
            delegator=f"{DELEGATOR.issuer}#{DELEGATOR.subject}",
            **fields,
        )


def build_tree(rt: Runtime) -> Tree:
    b = rt.broker
    scope = grants(("tool:call", "billing.refund"), ("read", "crm"), ("read", "billing.invoices"))
    root = b.open_task(
        workload("orchestrator"),
        OpenTaskRequest(
            intent="billing.refund",
            description="refund T-42",
            scope=scope,
            ttl_seconds=600,
            delegator=DELEGATOR,
        ),
    )
    rtok = root.token
    b.authorize(rtok, AuthorizeRequest("read", "billing.invoices"))
    d1 = b.delegate(
        b.verify_token(rtok),
        root.task.id,
        workload("refunder").spiffe_id,
        grants(("tool:call", "billing.refund"), ("read", "crm")),
        300,
    )
    child = b.open_task(workload("refunder"), OpenTaskRequest(None, "", None, 300, delegation=d1.id))
    d2 = b.delegate(
        b.verify_token(child.token), child.task.id, workload("lookup").spiffe_id, grants(("read", "crm")), 120
    )
    grand = b.open_task(workload("lookup"), OpenTaskRequest(None, "", None, 120, delegation=d2.id))
    r = b.authorize(grand.token, AuthorizeRequest("read", "crm.customers"))
    emit_as(
        rt,
        ev.CREDENTIAL_MINTED,
        grand.task.id,
        {"kind": "jwt", "audience": "crm"},
        lease_id="lse_grand",
        decision_id=r.decision.id,
    )
    args = {"ticket_id": "T-42", "amount": 10}
    r = b.authorize(child.token, AuthorizeRequest("tool:call", "billing.refund", args))
    assert r.decision.outcome.value == "approval_required", r.decision
    approval_id = r.decision.approval_id
    assert approval_id
    b.decide_approval(approval_id, grant=True, by="uid:0")
    r = b.authorize(child.token, AuthorizeRequest("tool:call", "billing.refund", args))
    assert r.decision.outcome.value == "allow", r.decision
    emit_as(
        rt,
        ev.CREDENTIAL_MINTED,
        child.task.id,
        {"kind": "jwt", "audience": "billing"},
        lease_id="lse_child",
        decision_id=r.decision.id,
    )
    emit_as(
        rt,
        ev.CALL_FORWARDED,
        child.task.id,
        {"resource": "tool:billing.refund", "method": "POST", "target": "billing.refund"},
        decision_id=r.decision.id,
        lease_id="lse_child",
    )
    emit_as(
        rt,
        ev.CALL_RESULT,
        child.task.id,
        {"status": 200, "target": "billing.refund"},
        decision_id=r.decision.id,
        lease_id="lse_child",
    )
    b.close_task(root.task.id, by="orchestrator")
    return Tree(
        root.task.id,
        child.task.id,
        grand.task.id,
        approval_id,
        {"root": rtok, "child": child.token, "grand": grand.token},
        ["lse_grand", "lse_child"],
    )


def sql(rt: Runtime, statement: str, **params: Any) -> None:
    """Tamper as an attacker with database access would: raw SQL, no Tether code."""
    with rt.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def scalar(rt: Runtime, statement: str, **params: Any) -> Any:
    with rt.db.engine.connect() as conn:
        return conn.execute(text(statement), params).scalar()

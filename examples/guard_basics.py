"""The SDK without any framework: a task in a `with` block, tools behind `@guard`.

python examples/guard_basics.py
"""

from __future__ import annotations

from _broker import broker_client

from tether.sdk import ApprovalRequired, Denied, guard


@guard(action="read", resource="crm.customers")
def read_customer(customer_id: str) -> str:
    return f"customer {customer_id}"


@guard(action="tool:call", resource="billing.refund")
def refund(ticket_id: str, amount_cents: int) -> str:
    return f"refunded {amount_cents} for {ticket_id}"


with broker_client() as client:
    with client.task("support.triage", [("read", "crm")], ttl=120) as task:
        print("allowed:", read_customer("42"))
        try:
            refund("T-1", 100)  # not in this task's scope
        except Denied as exc:
            print("denied:", exc.code, exc.decision_id)
    with client.task("billing.refund", [("tool:call", "billing.refund")], ttl=120):
        try:
            refund("T-1", 100)
        except ApprovalRequired as exc:
            print("needs approval:", exc.approval_id, "(an operator runs `tether approve ID`)")

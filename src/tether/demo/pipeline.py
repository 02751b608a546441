"""The scripted support-triage pipeline (no LLM): what each agent does, step by step.

A human (alice) asks the orchestrator agent about a double charge. The orchestrator opens
a task for her and delegates: a reader sub-agent reads the restricted customer record from
the CRM with a short-lived credential; a notifier sub-agent tries to email the customer
through the MCP gateway — and the taint rule stops it, because the tree has read
restricted data. A refund needs a human's approval, which the demo's operator grants.
Closing the orchestrator's task ends the whole tree and revokes every credential (the
CRM refuses the reader's credential from then on); the audit log tells the story back.

Each step is reported to a :class:`Reporter` as it happens and asserted by the tests.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from tether.audit.trace import Trace, build_trace
from tether.audit.verify import verify_chains
from tether.demo.stack import (
    AGENTS,
    ENVIRONMENT,
    Stack,
    register_workloads,
    running_stack,
    start_crm,
    wait_until,
)
from tether.errors import TetherError
from tether.sdk import ApprovalRequired, Client, Denied, WorkloadApiSvid, current_decision, guard
from tether.store.db import Database

HUMAN = "alice@example.com"
ASK = "Customer 42 says ticket T-1042 was charged twice. Check their record, tell them, refund it."
REVOCATION_BOUND = 15.0  # seconds the CRM may take to learn of a revocation (its feed long-polls)


@dataclass
class Step:
    key: str
    title: str
    status: str  # ok | denied | approval | revoked | failed
    detail: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


class Reporter(Protocol):
    def step(self, step: Step) -> None: ...
    def trace(self, trace: Trace) -> None: ...


@dataclass
class Result:
    steps: list[Step]
    wall_seconds: float
    state_dir: str
    trace: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)

    def by_key(self) -> dict[str, Step]:
        return {s.key: s for s in self.steps}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "wall_seconds": round(self.wall_seconds, 3),
            "state_dir": self.state_dir,
            "steps": [s.to_dict() for s in self.steps],
            "trace": self.trace,
        }


class _Run:
    def __init__(self, stack: Stack, reporter: Reporter, started: float) -> None:
        self.stack, self.reporter = stack, reporter
        self.steps: list[Step] = []
        self._t = started

    def report(self, key: str, title: str, status: str = "ok", **detail: Any) -> Step:
        now = time.perf_counter()
        step = Step(key, title, status, detail, now - self._t)
        self._t = now
        self.steps.append(step)
        self.reporter.step(step)
        return step

    def client(self, agent: str, *, dpop: bool = True) -> Client:
        s = self.stack.settings
        return Client(
            self.stack.url,
            audience=s.broker_audience,
            dpop=dpop,
            svid=WorkloadApiSvid(self.stack.workload_socket, spiffe_id=AGENTS[agent]),
        )


# The refund tool of the orchestrator: one decorator puts it behind policy and approval.
@guard(action="tool:call", resource="billing.refund")
def refund(ticket_id: str, amount_cents: int) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "refunded_cents": amount_cents,
        "decision_id": current_decision().decision_id,
    }


def _reasons(exc: Denied) -> list[dict[str, str]]:
    return [{"policy_id": r.policy_id, "message": r.message} for r in exc.reasons]


async def _notify(task: Any, stack: Stack, svid_file: Path) -> dict[str, Any]:
    from tether.sdk.integrations.mcp import gateway_session

    upstream = [__import__("sys").executable, "-m", "tether.demo.email_server"]
    async with gateway_session(
        task, server="email", upstream=upstream, broker_url=stack.url, gateway_svid_file=svid_file
    ) as session:
        listed = [t.name for t in (await session.list_tools()).tools]
        result = await session.call_tool(
            "send",
            {
                "to": "dana@example.com",
                "subject": "About T-1042",
                "body": "Your card ending 4242 was charged twice.",
            },
        )
    text = " ".join(getattr(c, "text", "") for c in result.content)
    meta = (result.meta or {}).get("tether", {}) if hasattr(result, "meta") else {}
    return {"tools_visible": listed, "is_error": bool(result.is_error), "result": text[:300], "tether": meta}


def run_pipeline(reporter: Reporter, *, state_dir: Path | None = None, keep: bool = False) -> Result:
    started = time.perf_counter()
    with running_stack(state_dir, keep=keep) as stack:
        run = _Run(stack, reporter, started)
        try:
            _story(run, stack)
        except TetherError as exc:
            run.report("error", "the demo stopped", "failed", code=exc.code, message=exc.message)
        trace = _trace(run, stack)
        return Result(
            run.steps, time.perf_counter() - started, str(stack.state_dir), trace.to_dict() if trace else None
        )


def _story(run: _Run, stack: Stack) -> None:
    status = stack.admin("status")
    run.report(
        "broker",
        "broker up on a temporary state directory",
        url=stack.url,
        environment=status["environment"],
        store=status["store"],
        policy=status["policy_version"],
    )
    entries = register_workloads(stack)
    run.report(
        "workloads",
        "operator registers the agents (kernel-attested: uid + executable)",
        spiffe_ids=[e["spiffe_id"] for e in entries],
    )
    start_crm(stack)
    run.report("crm", "CRM service up: accepts only tether credentials for audience `crm`", url=stack.crm_url)

    orchestrator, reader, notifier = (
        run.client("orchestrator"),
        run.client("reader"),
        run.client("notifier", dpop=False),
    )  # the notifier's token rides over stdio: no DPoP proofs there
    run.report("ask", f"{HUMAN} asks the orchestrator", human=HUMAN, request=ASK)

    scope = [("read", "crm"), ("read", "tickets"), ("tool:call", "email.send")]
    with orchestrator.task(
        "support.triage", scope, ttl=300, description=f"on behalf of {HUMAN}: {ASK}"
    ) as root:
        run.report(
            "open",
            "orchestrator opens a task for this one purpose",
            task_id=root.id,
            intent="support.triage",
            scope=[g.to_dict() for g in root.scope],
            expires_at=root.expires_at,
        )

        to_reader = root.delegate(AGENTS["reader"], [("read", "crm.customers")], ttl=120)
        to_notifier = root.delegate(AGENTS["notifier"], [("tool:call", "email.send")], ttl=120)
        run.report(
            "delegate",
            "orchestrator delegates a narrower slice to each sub-agent",
            reader={"delegation": to_reader.id, "scope": ["read crm.customers"]},
            notifier={"delegation": to_notifier.id, "scope": ["tool:call email.send"]},
        )

        reader_task = reader.task(delegation=to_reader)
        d = reader_task.authorize("read", "crm.customers")
        cred = d.credential
        if cred is None or cred.token is None:
            raise TetherError("the broker issued no credential for `crm`", code="demo_no_credential")
        r = httpx.get(stack.crm_url + "/customers/42", headers={"Authorization": f"Bearer {cred.token}"})
        run.report(
            "read",
            "reader reads the restricted customer record with a short-lived credential",
            "ok" if r.status_code == 200 else "failed",
            task_id=reader_task.id,
            decision_id=d.decision_id,
            lease_id=cred.lease_id,
            credential_expires_in=round((cred.expires_at or 0) - time.time()),
            crm_status=r.status_code,
            customer=r.json().get("customer", {}).get("name"),
        )

        notifier_task = notifier.task(delegation=to_notifier)
        svid_file = stack.state_dir / "gateway.svid"
        svid_file.write_text(
            WorkloadApiSvid(stack.workload_socket, spiffe_id=AGENTS["gateway"]).fetch(
                stack.settings.broker_audience
            )
        )
        svid_file.chmod(0o600)
        sent = asyncio.run(_notify(notifier_task, stack, svid_file))
        code = sent["tether"].get("code") if isinstance(sent["tether"], dict) else None
        run.report(
            "notify",
            "notifier tries to email the customer through the MCP gateway",
            "denied" if sent["is_error"] else "failed",
            task_id=notifier_task.id,
            **sent,
            code=code,
        )

        _refund(run, orchestrator)

    closed = root.closed
    run.report(
        "close",
        "orchestrator's task closes: the whole tree ends",
        "ok" if closed else "failed",
        task_id=root.id,
        subtree=[root.id, reader_task.id, notifier_task.id],
    )

    def refused() -> bool:
        return (
            httpx.get(
                stack.crm_url + "/customers/42", headers={"Authorization": f"Bearer {cred.token}"}
            ).status_code
            == 401
        )

    t0 = time.perf_counter()
    wait_until(refused, REVOCATION_BOUND, "revocation at the CRM")
    leases = stack.admin("leases.list", {"task_id": reader_task.id})
    run.report(
        "revoked",
        "the reader's credential is dead at the CRM",
        "revoked",
        lease_id=cred.lease_id,
        crm_status=401,
        seen_after_seconds=round(time.perf_counter() - t0, 3),
        leases=[
            {"lease_id": x.get("lease_id") or x.get("id"), "state": x.get("state")}
            for x in (leases if isinstance(leases, list) else [])
        ],
    )


def _refund(run: _Run, orchestrator: Client) -> None:
    with orchestrator.task(
        "billing.refund",
        [("tool:call", "billing.refund")],
        ttl=120,
        description=f"on behalf of {HUMAN}: refund T-1042",
    ) as task:
        try:
            refund("T-1042", 1500)
            raise TetherError("the refund ran without an approval", code="demo_no_approval")
        except ApprovalRequired as exc:
            run.report(
                "approval",
                "the refund needs a human: policy asks for an approval",
                "approval",
                task_id=task.id,
                approval_id=exc.approval_id,
                decision_id=exc.decision_id,
                reasons=_reasons(exc),
            )
            granted = run.stack.admin("approvals.approve", {"approval_id": exc.approval_id})
        done = refund("T-1042", 1500)
        run.report(
            "refund",
            "operator approves; the identical call runs once",
            task_id=task.id,
            approval_id=granted["approval_id"],
            approved_by=granted.get("decided_by"),
            **done,
        )


def _trace(run: _Run, stack: Stack) -> Trace | None:
    root = (
        run.steps[[s.key for s in run.steps].index("open")].detail["task_id"]
        if any(s.key == "open" for s in run.steps)
        else None
    )
    db = Database(stack.settings.store_url)
    try:
        with db.read() as conn:
            trace = build_trace(conn, root) if root else None
            report = verify_chains(conn)
    finally:
        db.dispose()
    if trace is not None:
        run.reporter.trace(trace)
        run.report(
            "trace",
            "the chain of autonomy, from the audit log (`tether audit trace`)",
            root_task_id=trace.root.task_id,
            events=trace.events,
            tampered=len(trace.tampered),
        )
    run.report(
        "verify",
        "the audit hash chains verify (`tether audit verify`)",
        "ok" if report.ok else "failed",
        events=report.events,
        chains=dict(report.chains),
    )
    return trace


__all__ = ["ENVIRONMENT", "Reporter", "Result", "Step", "run_pipeline"]

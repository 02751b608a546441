"""Deciding one action now (``authorize``) and the human approvals policy asks for.

The order inside ``authorize`` is the one in docs/architecture.md ("One action, through
the files"): token → invariants (task active, grant within scope) → context (task,
catalog, environment, risk) → Cedar → (credential) → audit, all in one transaction
before the answer leaves.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from typing import Any

from tether import actions, tracing
from tether.audit import event as ev
from tether.audit.chain import Unit
from tether.broker_base import (
    AuthorizeRequest,
    AuthorizeResult,
    BrokerBase,
    IssuedCredential,
    args_digest,
    audit_fields,
    new_id,
)
from tether.catalog import Resource
from tether.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    TetherError,
    Unauthenticated,
)
from tether.model import (
    Approval,
    ApprovalState,
    Decision,
    Grant,
    Outcome,
    Reason,
    Task,
)
from tether.policy import shadow
from tether.policy.context import (
    action_context,
    approval_context,
    request_context,
    risk_context,
)
from tether.policy.engine import PolicyRequest, PolicyResult
from tether.store import raw, repo
from tether.tokens import TaskTokenClaims

#: When the current decision started (per thread and task), for its `latency_ms`.
_STARTED: contextvars.ContextVar[float] = contextvars.ContextVar("tether_decision_started", default=0.0)


class ActionDecisions(BrokerBase):
    # -- authorize -----------------------------------------------------------------------
    def _check_binding(self, token: str, claims: TaskTokenClaims, proof: Any) -> None:
        if self.token_binding is not None:
            self.token_binding(token, claims, proof)
        elif claims.jkt is not None:
            raise Unauthenticated(
                "the task token is DPoP-bound and this broker cannot check proofs", code="dpop_unsupported"
            )

    def verify_token(self, token: str, proof: Any = None, audience: str | None = None) -> TaskTokenClaims:
        """Signature, claims and sender constraint (``proof``: a ``tether.identity.dpop.DpopProof``)."""
        claims = self.tokens.verify(token, now=self.clock(), audience=audience)
        self._check_binding(token, claims, proof)
        return claims

    def authorize(self, token: str, req: AuthorizeRequest, proof: Any = None) -> AuthorizeResult:
        now = self.clock()
        try:
            claims = self.tokens.verify(token, now=now, audience=req.audience)
            self._check_binding(token, claims, proof)
        except Unauthenticated as exc:
            self._audit_rejected(exc, req)
            raise
        return self.authorize_claims(claims, req, now=now)

    def _audit_rejected(self, exc: TetherError, req: AuthorizeRequest, task: Task | None = None) -> None:
        """A refused credential is still an event: investigators look for probing."""
        fields = audit_fields(task) if task else {}
        with self.audit.unit() as u:
            u.emit(
                ev.DECISION,
                {
                    "action": req.action[:64],
                    "resource": req.resource[:256],
                    "outcome": "deny",
                    "code": exc.code,
                    "policy_version": self.engine.bundle.version,
                },
                decision_id=new_id("dec"),
                trace_id=req.trace_id,
                **fields,
            )

    def refuse_body(self, token: str, bad: TetherError) -> None:
        """A malformed authorize body: the token's signature and claims are checked anyway,
        so a forged token is refused (and recorded) as forged whatever the body held;
        otherwise ``bad`` stands. (The sender constraint needs the body; it is not checked.)"""
        try:
            self.tokens.verify(token, now=self.clock())
        except Unauthenticated as exc:
            self._audit_rejected(exc, AuthorizeRequest(action="", resource=""))
            raise
        raise bad

    def _catalog_refusal(self, req: AuthorizeRequest) -> tuple[InvalidRequest | None, Resource | None]:
        if req.action not in actions.SCOPED:
            return InvalidRequest(
                f"unknown action `{req.action}`", code="unknown_action", field="action"
            ), None
        resource = self.catalog.get(req.resource)
        if resource is None:
            return InvalidRequest(
                f"unknown resource `{req.resource}`; it is not in the catalog",
                code="unknown_resource",
                field="resource",
            ), None
        return None, resource

    def authorize_claims(
        self, claims: TaskTokenClaims, req: AuthorizeRequest, *, now: float | None = None
    ) -> AuthorizeResult:
        _STARTED.set(time.perf_counter())
        now = self.clock() if now is None else now
        refused, resource = self._catalog_refusal(req)
        digest = args_digest(req.arguments)
        decision_id = new_id("dec")
        with self.audit.unit() as u:
            with tracing.span("tether.store.task"):
                found = repo.get_task_and_taint(u.conn, claims.task_id)
            task, taint = found if found else (None, -1)
            if task is None or task.agent != claims.agent:
                raise Unauthenticated("the task token names no task of this agent", code="token_unknown_task")
            if resource is not None:
                return self._authorize_task(u, task, taint, resource, req, digest, decision_id, now)
            # The token verified: an unknown action or resource is a decision of this task
            # like any other (traced, searchable by agent, counted as a call), then a 400.
            assert refused is not None
            decision = Decision(
                decision_id,
                Outcome.DENY,
                (Reason("invariant", refused.message),),
                self.engine.bundle.version,
                code=refused.code,
            )
            self._emit_decision(u, task, req, decision, digest, {})
        refused.details["decision_id"] = decision_id
        raise refused

    def _authorize_task(
        self,
        u: Unit,
        task: Task,
        taint: int,
        resource: Resource,
        req: AuthorizeRequest,
        digest: str,
        decision_id: str,
        now: float,
    ) -> AuthorizeResult:
        # Invariants before policy: a dead task or a grant outside the scope is denied
        # whatever the policies say.
        broken: tuple[str, str] | None = None
        if not task.is_active(now):
            broken = ("task_not_active", f"task is {task.state.value}")
        elif not self.catalog.grant_within(Grant(req.action, req.resource), task.scope):
            broken = ("out_of_scope", f"`{req.action}` on `{req.resource}` is outside the task scope")
        if broken is not None:
            code, why = broken
            decision = Decision(
                decision_id,
                Outcome.DENY,
                (Reason("invariant", why),),
                self.engine.bundle.version,
                code=code,
            )
            self._emit_decision(u, task, req, decision, digest, {})
            return AuthorizeResult(decision, task)
        risk: dict[str, Any] = {
            "calls_last_minute": repo.calls_since(u.conn, task.id, now - 60),
            "first_use": repo.is_first_use(u.conn, task.agent, resource.id),
            # -1 in the store means "nothing read yet"; policy sees the public floor, 0.
            "max_sensitivity_read": max(0, taint),
        }
        risk["drift"] = self.drift.signal(u.conn, task, req.action, resource.id, risk["calls_last_minute"])
        with tracing.span("tether.policy"):
            decision, approval_used, policy = self._decide(
                u, task, resource, req, risk, digest, decision_id, now
            )
        credential = None
        if decision.allowed:
            with tracing.span("tether.connector"):
                decision, credential = self._on_allow(
                    u, task, resource, req, decision, risk, approval_used, now
                )
        self._emit_decision(
            u,
            task,
            req,
            decision,
            digest,
            risk,
            approval_used.id if approval_used and decision.allowed else None,
            credential.lease_id if credential else None,
            policy,
        )
        if policy.shadow is not None:
            shadow.record(
                u.emit, self.engine.shadow_counters, policy, decision_id, req.trace_id, audit_fields(task)
            )
        return AuthorizeResult(decision, task, credential)

    def _on_allow(
        self,
        u: Unit,
        task: Task,
        resource: Resource,
        req: AuthorizeRequest,
        decision: Decision,
        risk: Mapping[str, Any],
        approval_used: Approval | None,
        now: float,
    ) -> tuple[Decision, IssuedCredential | None]:
        """Effects of an allow, all or nothing: consume the approval, record use and taint,
        mint the credential. Any failure turns the allow into an audited deny."""
        credential: IssuedCredential | None = None
        taints = actions.taints(req.action) and resource.sensitivity > risk["max_sensitivity_read"]
        if approval_used is None and not risk["first_use"] and not taints and not self.allow_hooks:
            return decision, None  # nothing to do: no savepoint (two statements) either
        try:
            with raw.savepoint(u.conn):
                if approval_used is not None and not repo.set_approval_state(
                    u.conn,
                    approval_used.id,
                    expect=ApprovalState.GRANTED,
                    new=ApprovalState.CONSUMED,
                    by=None,
                    now=now,
                ):
                    raise Conflict("the approval was already used", code="approval_used")
                if risk["first_use"]:
                    repo.note_resource_use(u.conn, task.agent, resource.id, now)
                if taints:
                    repo.raise_sensitivity_read(
                        u.conn, [task.id, *self._ancestor_ids(u, task)], resource.sensitivity
                    )
                for hook in self.allow_hooks:
                    credential = hook(u, task, resource, req, decision) or credential
        except TetherError as exc:
            if exc.code in ("audit_unavailable", "store_unavailable", "audit_conflict"):
                raise
            return Decision(
                decision.id,
                Outcome.DENY,
                (Reason("invariant", exc.message),),
                decision.policy_version,
                code=exc.code,
            ), None
        return decision, credential

    def _ancestor_ids(self, u: Unit, task: Task) -> list[str]:
        out: list[str] = []
        parent = task.parent_id
        while parent is not None and len(out) <= self.settings.tasks.max_depth:
            out.append(parent)
            p = repo.get_task(u.conn, parent)
            parent = p.parent_id if p else None
        return out

    def _decide(
        self,
        u: Unit,
        task: Task,
        resource: Resource,
        req: AuthorizeRequest,
        risk: Mapping[str, Any],
        digest: str,
        decision_id: str,
        now: float,
    ) -> tuple[Decision, Approval | None, PolicyResult]:
        """The decision, the approval it used, and policy's result (its input for the record)."""
        principal = self._principal(task.agent, task.attestation, task.agent_attrs)
        facts = self._task_facts(task, now)

        def run(granted: bool) -> Any:
            ctx = action_context(
                task=facts,
                risk=risk_context(**risk),
                request=request_context(method=req.method, path=req.path),
                environment=self.settings.environment,
                approval=approval_context(granted=granted),
            )
            return self.engine.decide(
                PolicyRequest(
                    principal=principal,
                    action=req.action,
                    resource=resource,
                    context=ctx,
                    arguments=dict(req.arguments),
                )
            )

        result = run(False)
        if result.outcome is not Outcome.APPROVAL_REQUIRED:
            return (
                Decision(
                    decision_id,
                    result.outcome,
                    tuple(result.reasons),
                    result.policy_version,
                    code=result.code,
                ),
                None,
                result,
            )
        granted = repo.find_approval(
            u.conn, task.id, req.action, req.resource, digest, [ApprovalState.GRANTED]
        )
        if granted is not None and granted.expires_at > now:
            # Re-decide with the approval in context: other forbids still apply.
            result = run(True)
            return (
                Decision(
                    decision_id,
                    result.outcome,
                    tuple(result.reasons),
                    result.policy_version,
                    code=result.code,
                ),
                (granted if result.outcome is Outcome.ALLOW else None),
                result,
            )
        pending = repo.find_approval(
            u.conn, task.id, req.action, req.resource, digest, [ApprovalState.PENDING]
        )
        if pending is None or pending.expires_at <= now:
            why = "; ".join(r.message for r in result.reasons) or "approval required"
            pending = Approval(
                new_id("apr"),
                task.id,
                req.action,
                req.resource,
                digest,
                ApprovalState.PENDING,
                why,
                now,
                now + self.settings.approvals.ttl_seconds,
            )
            repo.insert_approval(u.conn, pending, decision_id)
            u.emit(
                ev.APPROVAL_REQUESTED,
                {
                    "approval_id": pending.id,
                    "action": req.action,
                    "resource": req.resource,
                    "args_digest": digest,
                    # What the approver is shown (masked by the audit rules on the way in).
                    "arguments": dict(req.arguments),
                    "reason": why,
                    "expires_at": pending.expires_at,
                },
                decision_id=decision_id,
                trace_id=req.trace_id,
                **audit_fields(task),
            )
        return (
            Decision(
                decision_id,
                Outcome.APPROVAL_REQUIRED,
                tuple(result.reasons),
                result.policy_version,
                approval_id=pending.id,
                code="approval_required",
            ),
            None,
            result,
        )

    def _emit_decision(
        self,
        u: Unit,
        task: Task,
        req: AuthorizeRequest,
        decision: Decision,
        digest: str,
        risk: Mapping[str, Any],
        approval_used: str | None = None,
        lease_id: str | None = None,
        policy: PolicyResult | None = None,
    ) -> None:
        payload: dict[str, Any] = {
            "action": req.action,
            "resource": req.resource,
            "outcome": decision.outcome.value,
            "reasons": [r.to_dict() for r in decision.reasons],
            "policy_version": decision.policy_version,
            "args_digest": digest,
            "risk": dict(risk),
            "environment": self.settings.environment,
        }
        started = _STARTED.get()
        if started:  # time from the start of `authorize_claims` to this record (the console shows it)
            payload["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if decision.code:
            payload["code"] = decision.code
        tracing.annotate({"tether.decision": decision.outcome.value, "tether.code": decision.code or ""})
        if decision.approval_id:
            payload["approval_id"] = decision.approval_id
        if approval_used:
            payload["approval_used"] = approval_used
        if req.method:
            payload["request"] = {"method": req.method, "path": req.path[:512]}
        if policy is not None:
            typed = policy.arguments.audit()
            if typed:
                # The canonical values policy read (the raw ones are in args_digest).
                payload["typed_arguments"] = typed
            if policy.outcome is not decision.outcome:
                # An effect of the allow failed after policy (replay compares with policy's).
                payload["policy_outcome"] = policy.outcome.value
            if policy.input is not None:
                # Replayable: everything Cedar saw (masked by the audit rules, keeping type).
                payload["input"] = policy.input
        recorded = u.emit(
            ev.DECISION,
            payload,
            decision_id=decision.id,
            trace_id=req.trace_id,
            lease_id=lease_id,
            **audit_fields(task),
        )
        repo.note_call(u.conn, task.id, recorded.ts)  # what `calls_last_minute` sums

    # -- approvals -----------------------------------------------------------------------
    def list_approvals(self, state: str | None = None) -> list[Approval]:
        with self.db.read() as conn:
            return repo.list_approvals(conn, state, now=self.clock())

    def decide_approval(self, approval_id: str, *, grant: bool, by: str, comment: str = "") -> Approval:
        now = self.clock()
        with self.audit.unit() as u:
            a = repo.get_approval(u.conn, approval_id)
            if a is None:
                raise NotFound(f"no approval `{approval_id}`", code="approval_not_found")
            # By time or by state: another replica's clock may be behind the leader's.
            if a.state is ApprovalState.EXPIRED or a.expires_at <= now:
                raise _expired(approval_id)
            new = ApprovalState.GRANTED if grant else ApprovalState.REJECTED
            if not repo.set_approval_state(
                u.conn, a.id, expect=ApprovalState.PENDING, new=new, by=by, now=now
            ):
                # Decided or expired since the read above (PostgreSQL reads committed rows):
                # say which, from the row as it is now.
                now_state = repo.get_approval(u.conn, a.id)
                if now_state is not None and now_state.state is ApprovalState.EXPIRED:
                    raise _expired(approval_id)
                state = (now_state or a).state.value
                raise Conflict(f"approval `{approval_id}` is already {state}", code="approval_decided")
            task = repo.get_task(u.conn, a.task_id)
            fields = audit_fields(task) if task else {"task_id": a.task_id}
            u.emit(
                ev.APPROVAL_GRANTED if grant else ev.APPROVAL_REJECTED,
                {
                    "approval_id": a.id,
                    "by": by,
                    "action": a.action,
                    "resource": a.resource,
                    "args_digest": a.args_digest,
                    "requested_at": a.created_at,  # the approval-wait histogram's start (tether.metrics)
                    **({"comment": comment[:1000]} if comment else {}),
                },
                **fields,
            )
            return repo.get_approval(u.conn, a.id) or a

    def drop_old_call_counts(self) -> int:
        """The leader's pass: forget per-second call counts no rate can read any more."""
        with self.db.begin() as conn:  # derived counts, not audited: the events stay
            return repo.drop_call_counts(conn, time.time() - repo.CALL_COUNTS_KEPT_SECONDS)

    #: Approvals one transaction of :meth:`expire_approvals` moves, and transactions per pass.
    EXPIRE_BATCH = 500
    EXPIRE_BATCHES = 20

    def expire_approvals(self) -> int:
        """End every `pending` approval past its expiry in `expired`, each with its
        ``approval.expired`` event in the transaction that moved it; returns how many.

        A periodic job of the leader (``Runtime``). The move is a compare-and-set
        (``repo.expire_approvals``), so two processes running it at once — two leaders
        overlapping across a change — write one event per approval between them, and
        the wait histogram (``tether.metrics``, fed by that event after commit) counts
        each expiry exactly once, whichever process moved it and whenever."""
        moved = 0
        for _ in range(self.EXPIRE_BATCHES):
            now = self.clock()
            with self.db.read() as conn:
                due = repo.due_approvals(conn, now, self.EXPIRE_BATCH)
            if not due:
                break
            with self.audit.unit() as u:
                tasks: dict[str, Task | None] = {}
                for a in repo.expire_approvals(u.conn, due, now):
                    if a.task_id not in tasks:
                        tasks[a.task_id] = repo.get_task(u.conn, a.task_id)
                    task = tasks[a.task_id]
                    u.emit(
                        ev.APPROVAL_EXPIRED,
                        {
                            "approval_id": a.id,
                            "action": a.action,
                            "resource": a.resource,
                            "args_digest": a.args_digest,
                            # The wait is requested → expiry, not → this pass (which may be late).
                            "requested_at": a.created_at,
                            "expires_at": a.expires_at,
                        },
                        **(audit_fields(task) if task else {"task_id": a.task_id}),
                    )
                    moved += 1
            if len(due) < self.EXPIRE_BATCH:
                break
        return moved


def _expired(approval_id: str) -> Conflict:
    return Conflict(
        f"approval `{approval_id}` has expired; the agent may ask again with the same call",
        code="approval_expired",
    )

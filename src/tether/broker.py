"""The core use cases: open, delegate, close and revoke tasks; authorize one action.

Pure of any web framework. Each use case is one store transaction on this writer's
audit chain (``AuditChain.unit``), so the state it changes and the event that records
it commit together or not at all. Every check fails closed: an exception anywhere
below means no allow.

The order inside ``authorize`` is the one in DESIGN.md: token → invariants (task
active, grant within scope) → context (task, catalog, environment, risk) → Cedar →
(credential) → audit, all before the answer leaves.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tether import actions
from tether.audit import event as ev
from tether.audit.chain import AuditChain, Unit
from tether.audit.event import canonical_json
from tether.catalog import Catalog, Resource
from tether.config import Settings
from tether.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TetherError,
    Unauthenticated,
)
from tether.identity.spiffe_id import parse_spiffe_id
from tether.model import (
    Approval,
    ApprovalState,
    Decision,
    Delegation,
    Delegator,
    Grant,
    Outcome,
    Reason,
    Task,
    TaskState,
    Workload,
)
from tether.policy.context import (
    action_context,
    approval_context,
    grant_context,
    lifecycle_context,
    request_context,
    risk_context,
    task_context_from_task,
)
from tether.policy.engine import PolicyEngine, PolicyPrincipal, PolicyRequest
from tether.store import repo
from tether.store.db import Database
from tether.tokens import TaskTokenClaims, TaskTokens

Clock = Callable[[], float]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def args_digest(arguments: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(dict(arguments)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class OpenTaskRequest:
    intent: str | None
    description: str
    scope: tuple[Grant, ...] | None
    ttl_seconds: int
    delegation: str | None = None
    delegator: Delegator | None = None
    cnf_jkt: str | None = None


@dataclass(frozen=True, slots=True)
class OpenedTask:
    task: Task
    token: str


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    action: str
    resource: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    method: str = ""
    path: str = ""
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """What a connector minted for one allowed action.

    ``for_agent`` may be returned to the agent (a short-lived access token, a database
    login); ``for_enforcer`` only ever reaches an enforcement point (an upstream secret
    to inject) and is never serialized towards the agent or the audit log.
    """

    lease_id: str
    # Secret material never goes through repr: a logged result must not leak it.
    for_agent: Mapping[str, Any] | None = field(default=None, repr=False)
    for_enforcer: Mapping[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AuthorizeResult:
    decision: Decision
    task: Task | None
    #: Filled by an allow hook (the credentials layer) on allow.
    credential: IssuedCredential | None = None


#: Called inside the transaction that ends tasks, so leases die with their tasks.
TasksEndedHook = Callable[[Unit, Sequence[Task], TaskState], None]
#: Called inside the allow transaction (before its decision event is written); may mint
#: a credential. Raising denies the action and rolls the whole transaction back.
AllowHook = Callable[[Unit, Task, Resource, AuthorizeRequest, Decision], IssuedCredential | None]
#: ``(token, claims, proof)`` → None or raise ``Unauthenticated`` (see ``Broker.token_binding``).
TokenBinding = Callable[[str, TaskTokenClaims, Any], None]


def _audit_fields(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "root_task_id": task.root_id,
        "parent_task_id": task.parent_id,
        "agent": task.agent,
        "delegator": f"{task.delegator.issuer}#{task.delegator.subject}" if task.delegator else None,
    }


class Broker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        audit: AuditChain,
        engine: PolicyEngine,
        catalog: Catalog,
        tokens: TaskTokens,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.engine = engine
        self.catalog = catalog
        self.tokens = tokens
        self.clock = clock
        self.tasks_ended_hooks: list[TasksEndedHook] = []
        self.allow_hooks: list[AllowHook] = []
        #: Checks a task token's sender constraint (DPoP, RFC 9449) right after its signature,
        #: as ``binding(token, claims, proof)``; raises ``Unauthenticated``. Set by the identity
        #: layer; without it a bound token is refused (nothing could check its proof).
        self.token_binding: TokenBinding | None = None

    # -- validation ----------------------------------------------------------------------
    def _resource(self, resource_id: str, field_name: str = "resource") -> Resource:
        res = self.catalog.get(resource_id)
        if res is None:
            raise InvalidRequest(
                f"unknown resource `{resource_id}`; it is not in the catalog",
                code="unknown_resource",
                field=field_name,
            )
        return res

    def _check_scope(self, scope: Sequence[Grant]) -> None:
        if not scope:
            raise InvalidRequest("`scope` must name at least one grant", code="invalid_scope")
        if len(scope) > 100:
            raise InvalidRequest("`scope` may hold at most 100 grants", code="invalid_scope")
        for i, g in enumerate(scope):
            if g.action not in actions.SCOPED:
                raise InvalidRequest(
                    f"unknown action `{g.action}`", code="unknown_action", field=f"scope[{i}].action"
                )
            self._resource(g.resource, f"scope[{i}].resource")

    def _principal(
        self, agent: str, attestation: str, tags: Mapping[str, str] | None = None
    ) -> PolicyPrincipal:
        return PolicyPrincipal(
            spiffe_id=agent,
            trust_domain=parse_spiffe_id(agent).trust_domain,
            attestation=attestation,
            tags=dict(tags or {}),
        )

    def _lifecycle_decisions(
        self,
        principal: PolicyPrincipal,
        action: str,
        scope: Sequence[Grant],
        task_facts: dict[str, Any],
        ttl: int,
        child: str,
    ) -> list[Reason]:
        """Decide ``task:open``/``task:delegate`` for each grant; the reasons of any deny."""
        denied: list[Reason] = []
        for g in scope:
            ctx = lifecycle_context(
                task=task_facts,
                environment=self.settings.environment,
                grant=grant_context(action=g.action, ttl_seconds=ttl, child_agent=child),
            )
            result = self.engine.decide(
                PolicyRequest(
                    principal=principal,
                    action=action,
                    resource=self._resource(g.resource),
                    context=ctx,
                    arguments={},
                )
            )
            if result.outcome is not Outcome.ALLOW:
                denied.extend(
                    result.reasons
                    or (Reason(result.code or "no_permit", f"`{g.action}` on `{g.resource}` not permitted"),)
                )
        return denied

    # -- tasks ---------------------------------------------------------------------------
    def open_task(self, workload: Workload, req: OpenTaskRequest) -> OpenedTask:
        if req.delegation:
            return self._redeem(workload, req)
        now = self.clock()
        if not req.intent or req.intent not in self.catalog.intents:
            raise InvalidRequest(
                f"unknown intent `{req.intent}`; see the catalog's intents",
                code="unknown_intent",
                field="intent",
            )
        if req.scope is None:
            raise InvalidRequest("`scope` is required", code="invalid_scope", field="scope")
        self._check_scope(req.scope)
        ttl = min(req.ttl_seconds, self.settings.tasks.max_ttl_seconds)
        task = Task(
            id=new_id("tsk"),
            agent=workload.spiffe_id,
            delegator=req.delegator,
            intent=req.intent,
            description=req.description,
            scope=req.scope,
            created_at=now,
            expires_at=now + ttl,
            parent_id=None,
            root_id="",
            depth=0,
            state=TaskState.ACTIVE,
            cnf_jkt=req.cnf_jkt,
            attestation=workload.attestation,
            agent_attrs=dict(workload.attributes),
        )
        task = _replace_root(task, task.id)
        facts = self._task_facts(task, now)
        principal = self._principal(workload.spiffe_id, workload.attestation, workload.attributes)
        denied = self._lifecycle_decisions(principal, actions.TASK_OPEN, req.scope, facts, ttl, "")
        with self.audit.unit() as u:
            if denied:
                u.emit(
                    ev.DECISION,
                    {
                        "action": actions.TASK_OPEN,
                        "outcome": "deny",
                        "reasons": [r.to_dict() for r in denied],
                        "policy_version": self.engine.bundle.version,
                        "intent": req.intent,
                    },
                    agent=workload.spiffe_id,
                    decision_id=new_id("dec"),
                )
            else:
                repo.insert_task(u.conn, task)
                u.emit(ev.TASK_OPENED, self._task_payload(task, workload), **_audit_fields(task))
        if denied:
            raise Forbidden(
                "policy does not allow opening this task",
                code="task_open_denied",
                reasons=[r.to_dict() for r in denied],
            )
        return OpenedTask(task, self.tokens.mint(task, now=now))

    def _task_payload(self, task: Task, workload: Workload | None) -> dict[str, Any]:
        return {
            "intent": task.intent,
            "description": task.description[:500],
            "scope": [g.to_dict() for g in task.scope],
            "expires_at": task.expires_at,
            "depth": task.depth,
            "act": list(task.act_chain),
            "attestation": workload.attestation if workload else None,
            "delegator": (
                {"sub": task.delegator.subject, "iss": task.delegator.issuer} if task.delegator else None
            ),
            "policy_version": self.engine.bundle.version,
            "bound": task.cnf_jkt is not None,
        }

    def _task_facts(self, task: Task, now: float) -> dict[str, Any]:
        return task_context_from_task(task, now)

    def delegate(
        self,
        claims: TaskTokenClaims,
        task_id: str,
        child_agent: str,
        scope: tuple[Grant, ...],
        ttl_seconds: int,
    ) -> Delegation:
        """Offer part of a task to one child agent; the child redeems it with its own SVID."""
        now = self.clock()
        if claims.task_id != task_id:
            raise Forbidden("the task token is not for this task", code="token_task_mismatch")
        parse_spiffe_id(child_agent)
        self._check_scope(scope)
        with self.db.read() as conn:
            parent = repo.get_task(conn, task_id)
        if parent is None:
            raise NotFound(f"no task `{task_id}`", code="task_not_found")
        self._require_active(parent, now)
        if parent.depth + 1 > self.settings.tasks.max_depth:
            raise Forbidden(
                f"delegation depth would exceed the maximum of {self.settings.tasks.max_depth}",
                code="depth_exceeded",
            )
        for i, g in enumerate(scope):
            if not self.catalog.grant_within(g, parent.scope):
                raise Forbidden(
                    f"`{g.action}` on `{g.resource}` is wider than the parent task's scope",
                    code="scope_exceeds_parent",
                    field=f"scope[{i}]",
                )
        if ttl_seconds <= 0:
            raise InvalidRequest("`ttl_seconds` must be positive", code="invalid_ttl")
        if now + ttl_seconds > parent.expires_at:
            raise Forbidden(
                "the child task would outlive its parent; ask for a shorter ttl",
                code="ttl_exceeds_parent",
                remaining_seconds=int(parent.expires_at - now),
            )
        principal = self._principal(parent.agent, parent.attestation, parent.agent_attrs)
        denied = self._lifecycle_decisions(
            principal, actions.TASK_DELEGATE, scope, self._task_facts(parent, now), ttl_seconds, child_agent
        )
        d = Delegation(
            id=new_id("dlg"),
            parent_task_id=parent.id,
            child_agent=child_agent,
            scope=scope,
            ttl_seconds=ttl_seconds,
            created_at=now,
            expires_at=min(now + self.settings.tasks.delegation_ttl_seconds, parent.expires_at),
        )
        with self.audit.unit() as u:
            if denied:
                u.emit(
                    ev.DECISION,
                    {
                        "action": actions.TASK_DELEGATE,
                        "outcome": "deny",
                        "child_agent": child_agent,
                        "policy_version": self.engine.bundle.version,
                        "reasons": [r.to_dict() for r in denied],
                    },
                    decision_id=new_id("dec"),
                    **_audit_fields(parent),
                )
            else:
                repo.insert_delegation(u.conn, d)
                u.emit(
                    ev.TASK_DELEGATED,
                    {
                        "delegation_id": d.id,
                        "child_agent": child_agent,
                        "scope": [g.to_dict() for g in scope],
                        "ttl_seconds": ttl_seconds,
                    },
                    **_audit_fields(parent),
                )
        if denied:
            raise Forbidden(
                "policy does not allow this delegation",
                code="delegation_denied",
                reasons=[r.to_dict() for r in denied],
            )
        return d

    def _redeem(self, workload: Workload, req: OpenTaskRequest) -> OpenedTask:
        now = self.clock()
        assert req.delegation is not None
        with self.db.read() as conn:
            d = repo.get_delegation(conn, req.delegation)
            parent = repo.get_task(conn, d.parent_task_id) if d else None
        # One answer for unknown, foreign and expired: don't tell a prober which it was.
        if d is None or parent is None or d.child_agent != workload.spiffe_id or d.expires_at <= now:
            raise Forbidden(
                "the delegation is unknown, expired or for another agent", code="delegation_invalid"
            )
        if d.redeemed_task_id is not None:
            raise Conflict("the delegation was already redeemed", code="delegation_used")
        self._require_active(parent, now)
        scope = req.scope if req.scope is not None else d.scope
        self._check_scope(scope)
        for i, g in enumerate(scope):
            if not self.catalog.grant_within(g, d.scope):
                raise Forbidden(
                    f"`{g.action}` on `{g.resource}` is wider than the delegation",
                    code="scope_exceeds_parent",
                    field=f"scope[{i}]",
                )
        if req.intent and req.intent != parent.intent:
            raise Forbidden("a delegated task keeps its parent's intent", code="intent_mismatch")
        ttl = min(req.ttl_seconds or d.ttl_seconds, d.ttl_seconds)
        expires = min(now + ttl, parent.expires_at)
        task = Task(
            id=new_id("tsk"),
            agent=workload.spiffe_id,
            delegator=parent.delegator,
            intent=parent.intent,
            description=req.description,
            scope=scope,
            created_at=now,
            expires_at=expires,
            parent_id=parent.id,
            root_id=parent.root_id,
            depth=parent.depth + 1,
            state=TaskState.ACTIVE,
            act_chain=(parent.agent, *parent.act_chain),
            cnf_jkt=req.cnf_jkt,
            attestation=workload.attestation,
            agent_attrs=dict(workload.attributes),
        )
        if task.depth > self.settings.tasks.max_depth:
            raise Forbidden("delegation depth exceeded", code="depth_exceeded")
        principal = self._principal(workload.spiffe_id, workload.attestation, workload.attributes)
        denied = self._lifecycle_decisions(
            principal, actions.TASK_OPEN, scope, self._task_facts(task, now), int(expires - now), ""
        )
        if denied:
            with self.audit.unit() as u:
                u.emit(
                    ev.DECISION,
                    {
                        "action": actions.TASK_OPEN,
                        "outcome": "deny",
                        "delegation_id": d.id,
                        "policy_version": self.engine.bundle.version,
                        "reasons": [r.to_dict() for r in denied],
                    },
                    agent=workload.spiffe_id,
                    decision_id=new_id("dec"),
                    parent_task_id=parent.id,
                    root_task_id=parent.root_id,
                )
            raise Forbidden(
                "policy does not allow opening this task",
                code="task_open_denied",
                reasons=[r.to_dict() for r in denied],
            )
        with self.audit.unit() as u:
            if not repo.redeem_delegation(u.conn, d.id, task.id):
                raise Conflict("the delegation was already redeemed", code="delegation_used")
            repo.insert_task(u.conn, task)
            # The child starts with what its parent has already read: the parent can hand that
            # data down, so a sibling must not be a clean channel to an external destination.
            inherited = repo.max_sensitivity_read(u.conn, parent.id)
            if inherited >= 0:
                repo.raise_sensitivity_read(u.conn, [task.id], inherited)
            u.emit(
                ev.TASK_OPENED,
                {**self._task_payload(task, workload), "delegation_id": d.id},
                **_audit_fields(task),
            )
        return OpenedTask(task, self.tokens.mint(task, now=now))

    def _require_active(self, task: Task, now: float) -> None:
        if task.state is not TaskState.ACTIVE:
            raise Conflict(f"task `{task.id}` is {task.state.value}", code="task_not_active")
        if now >= task.expires_at:
            raise Conflict(f"task `{task.id}` has expired", code="task_not_active")

    def get_task(self, task_id: str) -> tuple[Task, list[Task]]:
        with self.db.read() as conn:
            task = repo.get_task(conn, task_id)
            if task is None:
                raise NotFound(f"no task `{task_id}`", code="task_not_found")
            return task, repo.children(conn, task_id)

    def list_tasks(self, state: str | None = None, agent: str | None = None) -> list[Task]:
        with self.db.read() as conn:
            return repo.list_tasks(conn, state=state, agent=agent)

    def close_task(self, task_id: str, *, by: str, claims: TaskTokenClaims | None = None) -> list[str]:
        """Close a task and every descendant (token holder or operator)."""
        if claims is not None and claims.task_id != task_id:
            raise Forbidden("the task token is not for this task", code="token_task_mismatch")
        return self._end_tree([task_id], TaskState.CLOSED, by=by, must_exist=True)

    def revoke(
        self,
        *,
        task_id: str | None = None,
        agent: str | None = None,
        delegator: Delegator | None = None,
        everything: bool = False,
        by: str,
    ) -> list[str]:
        """The kill switch: revoke tasks (and their descendants) by task, agent, delegator or all."""
        with self.db.read() as conn:
            if task_id:
                roots = [task_id]
            elif agent:
                roots = [t.id for t in repo.active_tasks_of_agent(conn, agent)]
            elif delegator:
                roots = [
                    t.id
                    for t in repo.active_tasks_of_delegator(conn, delegator.subject, delegator.issuer or None)
                ]
            elif everything:
                roots = [t.id for t in repo.all_active_tasks(conn)]
            else:
                raise InvalidRequest("name a task, an agent, a delegator or all", code="invalid_request")
        return self._end_tree(roots, TaskState.REVOKED, by=by, must_exist=bool(task_id))

    def expire_due(self) -> list[str]:
        """End every task past its expiry (and its descendants); run by the reaper."""
        now = self.clock()
        with self.db.read() as conn:
            due = [t.id for t in repo.expired_active_roots(conn, now)]
        return self._end_tree(due, TaskState.EXPIRED, by="reaper", must_exist=False)

    def _end_tree(self, roots: Sequence[str], state: TaskState, *, by: str, must_exist: bool) -> list[str]:
        now = self.clock()
        etype = {
            TaskState.CLOSED: ev.TASK_CLOSED,
            TaskState.EXPIRED: ev.TASK_EXPIRED,
            TaskState.REVOKED: ev.TASK_REVOKED,
        }[state]
        ended: list[Task] = []
        with self.audit.unit() as u:
            seen: set[str] = set()
            for root in roots:
                tree = repo.subtree(u.conn, root)
                if not tree and must_exist:
                    raise NotFound(f"no task `{root}`", code="task_not_found")
                live = [t for t in tree if t.state is TaskState.ACTIVE and t.id not in seen]
                seen.update(t.id for t in tree)
                # Descendants end with the same state; the payload names the task whose end
                # caused theirs, so a trace shows the cascade.
                repo.end_tasks(u.conn, [t.id for t in live], state, now)
                for t in live:
                    u.emit(etype, {"by": by, "cause_task_id": root, "state": state.value}, **_audit_fields(t))
                ended.extend(live)
            for hook in self.tasks_ended_hooks:
                hook(u, ended, state)
        return [t.id for t in ended]

    # -- authorize -----------------------------------------------------------------------
    def _check_binding(self, token: str, claims: TaskTokenClaims, proof: Any) -> None:
        if self.token_binding is not None:
            self.token_binding(token, claims, proof)
        elif claims.jkt is not None:
            raise Unauthenticated(
                "the task token is DPoP-bound and this broker cannot check proofs", code="dpop_unsupported"
            )

    def verify_token(self, token: str, proof: Any = None) -> TaskTokenClaims:
        """Signature, claims and sender constraint (``proof``: a ``tether.identity.dpop.DpopProof``)."""
        claims = self.tokens.verify(token, now=self.clock())
        self._check_binding(token, claims, proof)
        return claims

    def authorize(self, token: str, req: AuthorizeRequest, proof: Any = None) -> AuthorizeResult:
        now = self.clock()
        try:
            claims = self.tokens.verify(token, now=now)
            self._check_binding(token, claims, proof)
        except Unauthenticated as exc:
            self._audit_rejected(exc, req)
            raise
        return self.authorize_claims(claims, req, now=now)

    def _audit_rejected(self, exc: TetherError, req: AuthorizeRequest, task: Task | None = None) -> None:
        """A refused credential is still an event: investigators look for probing."""
        fields = _audit_fields(task) if task else {}
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

    def authorize_claims(
        self, claims: TaskTokenClaims, req: AuthorizeRequest, *, now: float | None = None
    ) -> AuthorizeResult:
        now = self.clock() if now is None else now
        if req.action not in actions.SCOPED:
            exc: TetherError = InvalidRequest(
                f"unknown action `{req.action}`", code="unknown_action", field="action"
            )
            self._audit_rejected(exc, req)
            raise exc
        resource = self.catalog.get(req.resource)
        if resource is None:
            exc = InvalidRequest(
                f"unknown resource `{req.resource}`; it is not in the catalog",
                code="unknown_resource",
                field="resource",
            )
            self._audit_rejected(exc, req)
            raise exc
        digest = args_digest(req.arguments)
        decision_id = new_id("dec")
        with self.audit.unit() as u:
            found = repo.get_task_and_taint(u.conn, claims.task_id)
            task, taint = found if found else (None, -1)
            if task is None or task.agent != claims.agent:
                raise Unauthenticated("the task token names no task of this agent", code="token_unknown_task")
            if not task.is_active(now):
                decision = Decision(
                    decision_id,
                    Outcome.DENY,
                    (Reason("invariant", f"task is {task.state.value}"),),
                    self.engine.bundle.version,
                    code="task_not_active",
                )
                self._emit_decision(u, task, req, decision, digest, {})
                return AuthorizeResult(decision, task)
            grant = Grant(req.action, req.resource)
            if not self.catalog.grant_within(grant, task.scope):
                decision = Decision(
                    decision_id,
                    Outcome.DENY,
                    (Reason("invariant", f"`{req.action}` on `{req.resource}` is outside the task scope"),),
                    self.engine.bundle.version,
                    code="out_of_scope",
                )
                self._emit_decision(u, task, req, decision, digest, {})
                return AuthorizeResult(decision, task)
            risk = {
                "calls_last_minute": repo.calls_since(u.conn, task.id, now - 60),
                "first_use": repo.is_first_use(u.conn, task.agent, resource.id),
                # -1 in the store means "nothing read yet"; policy sees the public floor, 0.
                "max_sensitivity_read": max(0, taint),
            }
            decision, approval_used = self._decide(u, task, resource, req, risk, digest, decision_id, now)
            credential = None
            if decision.allowed:
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
        try:
            with u.conn.begin_nested():
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
                if actions.taints(req.action) and resource.sensitivity > risk["max_sensitivity_read"]:
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
    ) -> tuple[Decision, Approval | None]:
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
            return Decision(
                decision_id, result.outcome, tuple(result.reasons), result.policy_version, code=result.code
            ), None
        granted = repo.find_approval(
            u.conn, task.id, req.action, req.resource, digest, [ApprovalState.GRANTED]
        )
        if granted is not None and granted.expires_at > now:
            # Re-decide with the approval in context: other forbids still apply.
            result = run(True)
            return Decision(
                decision_id, result.outcome, tuple(result.reasons), result.policy_version, code=result.code
            ), (granted if result.outcome is Outcome.ALLOW else None)
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
                    "reason": why,
                    "expires_at": pending.expires_at,
                },
                decision_id=decision_id,
                trace_id=req.trace_id,
                **_audit_fields(task),
            )
        return Decision(
            decision_id,
            Outcome.APPROVAL_REQUIRED,
            tuple(result.reasons),
            result.policy_version,
            approval_id=pending.id,
            code="approval_required",
        ), None

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
        if decision.code:
            payload["code"] = decision.code
        if decision.approval_id:
            payload["approval_id"] = decision.approval_id
        if approval_used:
            payload["approval_used"] = approval_used
        if req.method:
            payload["request"] = {"method": req.method, "path": req.path[:512]}
        u.emit(
            ev.DECISION,
            payload,
            decision_id=decision.id,
            trace_id=req.trace_id,
            lease_id=lease_id,
            **_audit_fields(task),
        )

    # -- approvals -----------------------------------------------------------------------
    def list_approvals(self, state: str | None = None) -> list[Approval]:
        with self.db.read() as conn:
            return repo.list_approvals(conn, state)

    def decide_approval(self, approval_id: str, *, grant: bool, by: str) -> Approval:
        now = self.clock()
        with self.audit.unit() as u:
            a = repo.get_approval(u.conn, approval_id)
            if a is None:
                raise NotFound(f"no approval `{approval_id}`", code="approval_not_found")
            if a.expires_at <= now:
                raise Conflict(f"approval `{approval_id}` has expired", code="approval_expired")
            new = ApprovalState.GRANTED if grant else ApprovalState.REJECTED
            if not repo.set_approval_state(
                u.conn, a.id, expect=ApprovalState.PENDING, new=new, by=by, now=now
            ):
                raise Conflict(
                    f"approval `{approval_id}` is already {a.state.value}", code="approval_decided"
                )
            task = repo.get_task(u.conn, a.task_id)
            fields = _audit_fields(task) if task else {"task_id": a.task_id}
            u.emit(
                ev.APPROVAL_GRANTED if grant else ev.APPROVAL_REJECTED,
                {
                    "approval_id": a.id,
                    "by": by,
                    "action": a.action,
                    "resource": a.resource,
                    "args_digest": a.args_digest,
                },
                **fields,
            )
            return repo.get_approval(u.conn, a.id) or a


def _replace_root(task: Task, root: str) -> Task:
    return replace(task, root_id=root)

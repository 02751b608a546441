"""The broker: the task lifecycle here (open, delegate, redeem, close, revoke, expire);
deciding actions and approvals in ``tether.decisions``; shared parts in ``broker_base``.

Pure of any web framework. Each use case is one store transaction on this writer's
audit chain (``AuditChain.unit``), so the state it changes and the event that records
it commit together or not at all. Every check fails closed: an exception anywhere
below means no allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tether import actions
from tether.audit import event as ev
from tether.broker_base import (
    AllowHook,
    AuthorizeRequest,
    AuthorizeResult,
    BatchProgress,
    Clock,
    IssuedCredential,
    OpenedTask,
    OpenTaskRequest,
    TasksEndedHook,
    TokenBinding,
    args_digest,
    audit_fields,
    new_id,
)
from tether.decisions import ActionDecisions
from tether.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
)
from tether.identity.spiffe_id import parse_spiffe_id
from tether.model import (
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
    grant_context,
    lifecycle_context,
)
from tether.policy.engine import PolicyPrincipal, PolicyRequest
from tether.store import repo
from tether.tokens import TaskTokenClaims

# Records and helpers live in ``broker_base``; they stay importable from here.
__all__ = [
    "AllowHook",
    "AuthorizeRequest",
    "AuthorizeResult",
    "Broker",
    "Clock",
    "IssuedCredential",
    "OpenTaskRequest",
    "OpenedTask",
    "TasksEndedHook",
    "TokenBinding",
    "args_digest",
    "new_id",
]


class Broker(ActionDecisions):
    """Task lifecycle use cases: open, delegate, redeem, close, revoke, expire."""

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
            act_chain=req.act_chain,
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
                u.emit(ev.TASK_OPENED, self._task_payload(task, workload), **audit_fields(task))
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
                    **audit_fields(parent),
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
                    **audit_fields(parent),
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
                **audit_fields(task),
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
        max_batches: int | None = None,
        progress: BatchProgress | None = None,
    ) -> list[str]:
        """The kill switch: revoke tasks (and their descendants) by task, agent, delegator or all.

        Ended in committed batches of whole trees (see ``_end_tree``); ``max_batches`` stops
        after that many, so a caller can report progress, and a second call ends the rest."""
        roots = self.revoke_targets(task_id=task_id, agent=agent, delegator=delegator, everything=everything)
        return self._end_tree(
            roots,
            TaskState.REVOKED,
            by=by,
            must_exist=bool(task_id),
            max_batches=max_batches,
            progress=progress,
        )

    def revoke_targets(
        self,
        *,
        task_id: str | None = None,
        agent: str | None = None,
        delegator: Delegator | None = None,
        everything: bool = False,
    ) -> list[str]:
        """The tasks a ``revoke`` would start from (active ones; parents before children)."""
        with self.db.read() as conn:
            if task_id:
                return [task_id]
            if agent:
                found = repo.active_tasks_of_agent(conn, agent)
            elif delegator:
                found = repo.active_tasks_of_delegator(conn, delegator.subject, delegator.issuer or None)
            elif everything:
                found = repo.all_active_tasks(conn)
            else:
                raise InvalidRequest("name a task, an agent, a delegator or all", code="invalid_request")
        # Parents first: a child is then ended with its tree and skipped as a root.
        return [t.id for t in sorted(found, key=lambda t: (t.depth, t.created_at, t.id))]

    def expire_due(self) -> list[str]:
        """End every task past its expiry (and its descendants); run by the reaper."""
        now = self.clock()
        with self.db.read() as conn:
            due = [t.id for t in repo.expired_active_roots(conn, now)]
        return self._end_tree(due, TaskState.EXPIRED, by="reaper", must_exist=False)


def _replace_root(task: Task, root: str) -> Task:
    return replace(task, root_id=root)

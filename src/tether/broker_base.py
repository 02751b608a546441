"""What every broker use case shares: its parts, the request and result records, and
the checks of input against the catalog.

``Broker`` (task lifecycle, in ``tether.broker``) and ``ActionDecisions`` (authorize and
approvals, in ``tether.decisions``) build on ``BrokerBase``; they are one object at run
time, split so that each file holds one kind of use case.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tether import actions
from tether.audit import event as ev
from tether.audit.chain import AuditChain, Unit
from tether.audit.event import canonical_json
from tether.catalog import Catalog, Resource
from tether.config import Settings
from tether.drift import Drift
from tether.errors import (
    InvalidRequest,
    NotFound,
    Unavailable,
)
from tether.identity.spiffe_id import parse_spiffe_id

# The action request and the minted credential are kernel records (``tether.model``), so
# the credentials layer takes them without importing the broker; re-exported for callers.
from tether.model import AuthorizeRequest as AuthorizeRequest
from tether.model import (
    Decision,
    Delegator,
    Grant,
    Task,
    TaskState,
)
from tether.model import IssuedCredential as IssuedCredential
from tether.model import new_id as new_id
from tether.policy.context import (
    task_context_from_task,
)
from tether.policy.engine import PolicyEngine, PolicyPrincipal
from tether.seams import CredentialIssuer, Store
from tether.store import repo
from tether.tokens import TaskTokenClaims, TaskTokens

Clock = Callable[[], float]

#: Kill switch and reaper batches (``Broker._end_tree``): the first size, the largest, and
#: how often a batch the store cut is tried again, smaller.
END_BATCH = 100
END_BATCH_MAX = 1000
END_BATCH_RETRIES = 3
#: Called after each committed batch with (tasks ended so far, roots still to do).
BatchProgress = Callable[[int, int], None]


@functools.lru_cache(maxsize=4096)
def _trust_domain(agent: str) -> str:
    """Parsed once per agent id: every decision builds the principal from it."""
    return parse_spiffe_id(agent).trust_domain


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
    #: RFC 8693 actors on whose behalf the agent acts (token exchange with an actor token).
    act_chain: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OpenedTask:
    task: Task
    token: str


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


def audit_fields(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "root_task_id": task.root_id,
        "parent_task_id": task.parent_id,
        "agent": task.agent,
        "delegator": f"{task.delegator.issuer}#{task.delegator.subject}" if task.delegator else None,
    }


class BrokerBase:
    def __init__(
        self,
        settings: Settings,
        db: Store,
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
        #: The drift risk signal: baselines learnt from closed tasks (tether.drift).
        self.drift = Drift(db, audit, clock)
        #: Tasks per kill switch / reaper transaction; adapted to the store budget as it runs.
        self.end_batch, self.end_batch_max = END_BATCH, END_BATCH_MAX

    def _end_tree(
        self,
        roots: Sequence[str],
        state: TaskState,
        *,
        by: str,
        must_exist: bool,
        max_batches: int | None = None,
        progress: BatchProgress | None = None,
    ) -> list[str]:
        """End the trees under ``roots``, in committed batches of about ``self.end_batch`` tasks.

        One transaction for a whole estate could outlast the store budget and end nothing;
        batches each commit (tasks, events and lease revocations together), so an interrupted
        run leaves whole trees ended and the rest active, and running it again ends the rest
        (ending an ended task is a no-op). A tree is never split across batches. The size
        adapts to the store budget: halved when a batch took over a quarter of it, or when
        the store cut one (the cut batch rolled back and is tried again, smaller)."""
        pending = list(roots)
        ended: list[str] = []
        seen: set[str] = set()
        budget = self.db.timeout or 2.0
        batches = retries = 0
        while pending and (max_batches is None or batches < max_batches):
            started = time.monotonic()
            try:
                done, used = self._end_batch(pending, state, by=by, must_exist=must_exist, seen=set(seen))
            except Unavailable as exc:
                # Only a batch of several trees can be made smaller (one tree is never split).
                if (exc.code != "store_unavailable" or len(pending) < 2 or self.end_batch <= 1
                        or retries >= END_BATCH_RETRIES):  # fmt: skip
                    raise
                retries += 1
                self.end_batch = max(1, self.end_batch // 2)
                continue
            took = time.monotonic() - started
            for tree in done:
                seen.update(tree[1])
                ended.extend(tree[0])
            pending = [r for r in pending[used:] if r not in seen]  # children ended with a parent
            batches += 1
            # One tree (a close, a small expiry pass) says nothing about batch sizes.
            if used > 1 and took > budget / 4:
                self.end_batch = max(1, self.end_batch // 2)
            elif used > 1 and took < budget / 16:
                self.end_batch = min(self.end_batch_max, self.end_batch * 2)
            if progress is not None:
                progress(len(ended), len(pending))
        return ended

    def _end_batch(
        self, pending: Sequence[str], state: TaskState, *, by: str, must_exist: bool, seen: set[str]
    ) -> tuple[list[tuple[list[str], list[str]]], int]:
        """One transaction: trees from the front of ``pending`` until about ``end_batch`` tasks
        are ended. Returns (ended ids, whole tree ids) per root, and how many roots it used."""
        now = self.clock()
        etype = {
            TaskState.CLOSED: ev.TASK_CLOSED,
            TaskState.EXPIRED: ev.TASK_EXPIRED,
            TaskState.REVOKED: ev.TASK_REVOKED,
        }[state]
        ended: list[Task] = []
        out: list[tuple[list[str], list[str]]] = []
        used = 0
        with self.audit.unit() as u:
            for root in pending:
                if len(ended) >= self.end_batch:
                    break
                used += 1
                if root in seen:  # ended with its parent's tree
                    out.append(([], []))
                    continue
                tree = repo.subtree(u.conn, root)
                if not tree and must_exist:
                    raise NotFound(f"no task `{root}`", code="task_not_found")
                live = [t for t in tree if t.state is TaskState.ACTIVE and t.id not in seen]
                seen.update(t.id for t in tree)
                # Descendants end with the same state; the payload names the task whose end
                # caused theirs, so a trace shows the cascade.
                repo.end_tasks(u.conn, [t.id for t in live], state, now)
                for t in live:
                    u.emit(etype, {"by": by, "cause_task_id": root, "state": state.value}, **audit_fields(t))
                ended.extend(live)
                out.append(([t.id for t in live], [t.id for t in tree]))
            for hook in self.tasks_ended_hooks:
                hook(u, ended, state)
        return out, used

    def attach_credentials(self, issuer: CredentialIssuer) -> None:
        """Mint through ``issuer`` on allow, and revoke through it when tasks end."""
        self.allow_hooks.append(issuer.on_allow)
        self.tasks_ended_hooks.append(issuer.on_tasks_ended)

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
            trust_domain=_trust_domain(agent),
            attestation=attestation,
            tags=dict(tags or {}),
        )

    def _task_facts(self, task: Task, now: float) -> dict[str, Any]:
        return task_context_from_task(task, now)

"""How a gateway asks the broker: one Protocol, an in-process and a remote implementation.

A gateway never decides anything itself. Every call it sees becomes a broker
``authorize`` (the task token, the action, the resource, the arguments); the answer
is a :class:`Verdict`. Co-located with the broker, :class:`LocalAuthorizer` calls the
broker directly; elsewhere :class:`RemoteAuthorizer` calls the broker's enforcer API
(``/v1/gateway/*``, see :mod:`tether.gateway.wiring`), proving with its own JWT-SVID
that it is a configured enforcement point — only then does the broker hand it the
enforcer-only half of a credential (an upstream secret to inject).

Both fail closed: a broker that cannot be reached, or answers anything unexpected, is
an :class:`~tether.errors.Unavailable` and nothing is forwarded.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio.to_thread
import httpx

from tether.arguments import ArgSpec, parse_arg_specs
from tether.broker import AuthorizeRequest, AuthorizeResult
from tether.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    TetherError,
    Unauthenticated,
    Unavailable,
)
from tether.identity.dpop import DpopProof
from tether.model import Task

if TYPE_CHECKING:
    from tether.gateway.pins import ToolPins
    from tether.gateway.service import CallRecord
    from tether.seams import BrokerParts

T = TypeVar("T")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The broker's answer to one call, as an enforcement point needs it."""

    decision: Mapping[str, Any]  # Decision.to_dict(): decision, decision_id, reasons, code, …
    task: Mapping[str, Any] | None = None  # audit fields of the task (id, root, parent, agent)
    lease_id: str | None = None
    for_agent: Mapping[str, Any] | None = None
    for_enforcer: Mapping[str, Any] | None = None

    @property
    def outcome(self) -> str:
        return str(self.decision.get("decision", "deny"))

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"

    @property
    def decision_id(self) -> str | None:
        value = self.decision.get("decision_id")
        return str(value) if value else None

    def public(self) -> dict[str, Any]:
        """What the agent may see: the decision and the policies' own reasons, no credential."""
        keys = ("decision", "decision_id", "code", "reasons", "approval_id", "policy_version")
        return {k: self.decision[k] for k in keys if k in self.decision}


_INVARIANT_TEXT = {
    "task_not_active": "the task is no longer active (closed, expired or revoked); open a new task",
    "out_of_scope": "this call is outside the task's scope",
    "path_outside_roots": "a path argument is outside the folders this tool may touch",
    "argument_invalid": "an argument is not in a form that can be checked",
    "argument_missing": "a required argument is missing",
    "arguments_invalid": "the arguments cannot be checked",
}


def refusal_message(verdict: Verdict) -> str:
    """One line saying which check refused: the task, the scope, an argument invariant,
    or a policy (by id, with its reason). Never the credential or another tool's name."""
    public = verdict.public()
    code = str(public.get("code") or "denied")
    reasons = [r for r in public.get("reasons", []) if isinstance(r, dict)]
    decision = public.get("decision_id", "")
    if verdict.outcome == "approval_required":
        why = "; ".join(str(r.get("message", "")) for r in reasons) or "policy"
        return (
            f"approval required: this call waits for a human ({why}); approval id "
            f"{public.get('approval_id', '')}. Call again with the same arguments once it is approved."
        )
    if code in _INVARIANT_TEXT:
        detail = "; ".join(str(r.get("message", "")) for r in reasons if r.get("message"))
        text = _INVARIANT_TEXT[code] + (f" ({detail})" if detail else "")
        return f"refused ({code}): {text}; decision {decision}"
    if code == "policy_forbid":
        named = "; ".join(f"`{r.get('policy_id', '')}`: {r.get('message', '')}" for r in reasons)
        return f"denied by policy {named}; decision {decision}"
    if code == "no_permit":
        return f"denied (no_permit): no policy permits this call; decision {decision}"
    return f"denied ({code}): the call could not be decided safely; decision {decision}"


def task_fields(task: Task | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {
        "task_id": task.id,
        "root_task_id": task.root_id,
        "parent_task_id": task.parent_id,
        "agent": task.agent,
    }


def verdict_from_result(result: AuthorizeResult) -> Verdict:
    cred = result.credential
    return Verdict(
        decision=result.decision.to_dict(),
        task=task_fields(result.task),
        lease_id=cred.lease_id if cred else None,
        for_agent=cred.for_agent if cred else None,
        for_enforcer=cred.for_enforcer if cred else None,
    )


def upstream_credential_headers(verdict: Verdict) -> dict[str, str]:
    """Headers that carry the minted credential to the upstream (the credentials contract).

    ``inject``: the enforcer-only header and value; ``jwt``: the fresh access token as a
    bearer. Anything malformed is refused rather than half-sent (header injection).
    """
    fe, fa = verdict.for_enforcer, verdict.for_agent
    if fe and fe.get("kind") == "inject":
        name, value = fe.get("header"), fe.get("value")
        if (
            not isinstance(name, str)
            or not _HEADER_NAME.match(name)
            or not isinstance(value, str)
            or any(c in value for c in "\r\n\0")
        ):
            raise Unavailable(
                "the credential for this call is malformed; nothing was forwarded", code="credential_invalid"
            )
        return {name.lower(): value}
    if fa and fa.get("kind") == "jwt":
        token = fa.get("token")
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0 "):
            raise Unavailable(
                "the credential for this call is malformed; nothing was forwarded", code="credential_invalid"
            )
        return {"authorization": f"Bearer {token}"}
    return {}


class Authorizer(Protocol):
    """The broker as an enforcement point sees it."""

    async def authorize(self, token: str, req: AuthorizeRequest, proof: DpopProof | None = None) -> Verdict:
        """Decide one call; raises ``TetherError`` for a refused token or bad request.

        ``proof`` is the agent's DPoP proof as it reached the gateway (RFC 9449), checked
        by the broker against the method and URL the agent used.
        """
        ...

    async def visible(
        self,
        token: str,
        action: str,
        resources: Sequence[str],
        proof: DpopProof | None = None,
        audience: str | None = None,
    ) -> frozenset[str]:
        """The resources this task could be allowed ``action`` on (no decision is recorded)."""
        ...

    async def check_token(self, token: str, audience: str | None) -> dict[str, Any]:
        """The token's task (id, agent, scope, expiry) if it is good for ``audience`` now;
        raises ``Unauthenticated`` otherwise (see :func:`tether.gateway.service.check_token`)."""
        ...

    async def record(
        self,
        type_: str,
        verdict: Verdict,
        payload: Mapping[str, Any],
        trace_id: str | None = None,
        *,
        after_reply: bool = False,
    ) -> None:
        """Append one call record (``call.forwarded``/``call.result``) linked to its decision.

        ``after_reply``: the call's answer has already gone out, so nobody waits on this
        record but the request handler, and it may linger a moment to share a commit.
        """
        ...

    async def observe_tools(
        self, server: str, definitions: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, str]:
        """Check MCP tool definitions against their pins: ``{tool: "approved" | "changed"}``."""
        ...

    async def tool_arguments(self, resources: Sequence[str]) -> dict[str, dict[str, ArgSpec]]:
        """The catalog's typed arguments of each resource that declares some."""
        ...

    async def aclose(self) -> None: ...


#: How long a record written after its call's answer went out may wait to share a commit.
AFTER_REPLY_LINGER = 0.002
#: A batch this big is written at once.
MAX_BATCH = 64


class CallLog:
    """Group commit of call records: those that arrive together share one audit unit.

    A record is appended to a batch and its caller waits until the batch has committed,
    so ``record`` returns only once the event is in the store, as with one unit per
    record. The batch is written on the next turn of the event loop (SQLite, on the loop
    itself) or as soon as the writer thread is free (PostgreSQL), so it never waits for
    company: under load the records of concurrent calls share a transaction, a lone call
    pays what it did before. A record whose call was already answered (the HTTP gateway's)
    may linger :data:`AFTER_REPLY_LINGER` for more company: that moves its write off the
    path of the next request on a keep-alive connection. If a batch fails, each of its
    records is tried alone, so one record that cannot be written never costs the others
    theirs.

    (Call records follow the decision that let the call through, which was committed with
    its own audit event before anything was forwarded: docs/architecture.md, steps 6–7.)
    """

    def __init__(self, write: Callable[[Sequence[CallRecord]], None], inline: bool) -> None:
        self._write = write
        self._inline = inline
        self._pending: list[tuple[CallRecord, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False  # a batch is being written in the writer thread
        self._task: asyncio.Task[None] | None = None
        self._flush: asyncio.Handle | None = None  # the scheduled inline write
        self._soon = False  # ``_flush`` is for the next turn, not after a linger

    async def append(self, record: CallRecord, linger: float = 0.0) -> None:
        """Append ``record`` and return once it is committed. ``linger``: how long it may
        wait for company (on SQLite; a record nobody is waiting on but its handler)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (a test client's): nothing pending carries over
            self._loop, self._pending, self._busy, self._flush = loop, [], False, None
        fut = loop.create_future()
        self._pending.append((record, fut))
        if self._inline:
            self._schedule(loop, linger if len(self._pending) < MAX_BATCH else 0.0)
        elif not self._busy:
            self._busy = True
            self._task = loop.create_task(self._flush_threaded())
        await fut

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._flush is not None:
            if self._soon or delay > 0:
                return  # already due as soon as, or sooner than, this record needs
            self._flush.cancel()
        self._soon = delay <= 0
        self._flush = (
            loop.call_soon(self._flush_inline) if self._soon else loop.call_later(delay, self._flush_inline)
        )

    def _take(self) -> list[tuple[CallRecord, asyncio.Future[None]]]:
        batch, self._pending = self._pending, []
        return batch

    def _flush_inline(self) -> None:
        self._flush = None
        batch = self._take()
        if batch:
            self._settle(batch, self._outcomes(batch))

    async def _flush_threaded(self) -> None:
        try:
            while batch := self._take():
                outcomes = await anyio.to_thread.run_sync(self._outcomes, batch)
                self._settle(batch, outcomes)
        finally:
            self._busy = False

    def _outcomes(self, batch: list[tuple[CallRecord, asyncio.Future[None]]]) -> list[BaseException | None]:
        try:
            self._write([r for r, _ in batch])
            return [None] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
        out: list[BaseException | None] = []
        for r, _ in batch:
            try:
                self._write([r])
                out.append(None)
            except Exception as exc:
                out.append(exc)
        return out

    @staticmethod
    def _settle(
        batch: list[tuple[CallRecord, asyncio.Future[None]]], outcomes: list[BaseException | None]
    ) -> None:
        for (_, fut), exc in zip(batch, outcomes, strict=True):
            if fut.done():
                continue
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


class LocalAuthorizer:
    """In the broker's process: direct calls.

    On SQLite a decision is a few hundred microseconds of CPU and one local commit, less
    than handing it to a worker thread and back costs, so it runs on the event loop; on
    PostgreSQL (network round trips) it runs in a worker thread. Call records are group
    committed (:class:`CallLog`).
    """

    def __init__(self, runtime: BrokerParts, pins: ToolPins | None = None) -> None:
        from tether.gateway import service
        from tether.gateway.pins import ToolPins

        self.rt = runtime
        self._service = service
        # Pins live in the store: another ``ToolPins`` over the same chain sees the same pins.
        self.pins = pins if pins is not None else ToolPins(runtime.audit, runtime.broker.clock)
        self._inline = getattr(runtime.db, "dialect", "") == "sqlite"
        self.calls = CallLog(functools.partial(service.append_calls, runtime), self._inline)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._inline:
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args)

    async def authorize(self, token: str, req: AuthorizeRequest, proof: DpopProof | None = None) -> Verdict:
        result = await self._call(self.rt.broker.authorize, token, req, proof)
        return verdict_from_result(result)

    async def visible(
        self,
        token: str,
        action: str,
        resources: Sequence[str],
        proof: DpopProof | None = None,
        audience: str | None = None,
    ) -> frozenset[str]:
        found = await anyio.to_thread.run_sync(
            self._service.visible, self.rt, token, action, list(resources), proof, audience
        )
        return frozenset(found)

    async def check_token(self, token: str, audience: str | None) -> dict[str, Any]:
        return await self._call(self._service.check_token, self.rt, token, audience)

    async def record(
        self,
        type_: str,
        verdict: Verdict,
        payload: Mapping[str, Any],
        trace_id: str | None = None,
        *,
        after_reply: bool = False,
    ) -> None:
        record = self._service.call_record(
            type_, verdict.task, verdict.decision_id, verdict.lease_id, trace_id, dict(payload)
        )
        await self.calls.append(record, AFTER_REPLY_LINGER if after_reply else 0.0)

    async def observe_tools(
        self, server: str, definitions: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, str]:
        return await anyio.to_thread.run_sync(self.pins.observe, server, definitions)

    async def tool_arguments(self, resources: Sequence[str]) -> dict[str, dict[str, ArgSpec]]:
        return self._service.tool_arguments(self.rt, resources)

    async def aclose(self) -> None:
        return None


def _dpop(proof: DpopProof) -> dict[str, Any]:
    return {"proof": proof.proof, "method": proof.method, "url": proof.url, "count": proof.count}


_BY_STATUS: dict[int, type[TetherError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
}


class RemoteAuthorizer:
    """Over HTTP to a broker's enforcer API, authenticated by this gateway's JWT-SVID.

    ``svid`` is called for each request so a rotating SVID (a file SPIRE rewrites) is
    always fresh. Every call is a round trip: a closed or revoked task is refused at
    once, with no cache to outlive it.
    """

    def __init__(
        self,
        broker_url: str,
        svid: Callable[[], str],
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not broker_url.startswith(("http://", "https://")):
            raise InvalidRequest("the broker URL must be http(s)://…", code="invalid_field", field="broker")
        self._svid = svid
        self._client = httpx.AsyncClient(
            base_url=broker_url.rstrip("/"), timeout=timeout, transport=transport, follow_redirects=False
        )

    async def _post(
        self, path: str, body: Mapping[str, Any], token: str | None = None, trace: str | None = None
    ) -> Any:
        headers = {"x-tether-enforcer": self._svid()}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        if trace:
            headers["traceparent"] = trace
        try:
            resp = await self._client.post(path, json=dict(body), headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(
                "the broker is unreachable; nothing was allowed", code="broker_unavailable"
            ) from exc
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if resp.status_code == 200 and isinstance(doc, dict):
            return doc
        err = doc if isinstance(doc, dict) else {}
        cls = _BY_STATUS.get(resp.status_code, Unavailable)
        code = str(err.get("code") or ("broker_unavailable" if cls is Unavailable else "broker_refused"))
        raise cls(str(err.get("message") or f"the broker answered {resp.status_code}"), code=code)

    async def authorize(self, token: str, req: AuthorizeRequest, proof: DpopProof | None = None) -> Verdict:
        body: dict[str, Any] = {
            "action": req.action,
            "resource": req.resource,
            "arguments": dict(req.arguments),
            "context": {"method": req.method, "path": req.path},
        }
        if proof is not None and proof.present:
            body["dpop"] = _dpop(proof)
        if req.audience:
            body["audience"] = req.audience
        trace = f"00-{req.trace_id}-{'0' * 15}1-01" if req.trace_id else None
        doc = await self._post("/v1/gateway/authorize", body, token, trace)
        decision, cred = doc.get("decision"), doc.get("credential") or {}
        if not isinstance(decision, dict) or not isinstance(cred, dict):
            raise Unavailable(
                "the broker's answer was malformed; nothing was allowed", code="broker_unavailable"
            )
        return Verdict(
            decision=decision,
            task=doc.get("task"),
            lease_id=cred.get("lease_id"),
            for_agent=cred.get("for_agent"),
            for_enforcer=cred.get("for_enforcer"),
        )

    async def visible(
        self,
        token: str,
        action: str,
        resources: Sequence[str],
        proof: DpopProof | None = None,
        audience: str | None = None,
    ) -> frozenset[str]:
        body: dict[str, Any] = {"action": action, "resources": list(resources)}
        if proof is not None and proof.present:
            body["dpop"] = _dpop(proof)
        if audience:
            body["audience"] = audience
        doc = await self._post("/v1/gateway/visible", body, token)
        return frozenset(str(r) for r in doc.get("resources") or ())

    async def check_token(self, token: str, audience: str | None) -> dict[str, Any]:
        doc = await self._post("/v1/gateway/token", {"audience": audience} if audience else {}, token)
        if not isinstance(doc.get("task_id"), str) or not isinstance(doc.get("scope"), list):
            raise Unavailable("the broker's answer was malformed", code="broker_unavailable")
        return dict(doc)

    async def record(
        self,
        type_: str,
        verdict: Verdict,
        payload: Mapping[str, Any],
        trace_id: str | None = None,
        *,
        after_reply: bool = False,
    ) -> None:
        await self._post(
            "/v1/gateway/calls",
            {
                "type": type_,
                "task": dict(verdict.task or {}),
                "decision_id": verdict.decision_id,
                "lease_id": verdict.lease_id,
                "trace_id": trace_id,
                "payload": dict(payload),
            },
        )

    async def observe_tools(
        self, server: str, definitions: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, str]:
        doc = await self._post("/v1/gateway/tools", {"server": server, "tools": dict(definitions)})
        states = doc.get("states")
        if not isinstance(states, dict):
            raise Unavailable("the broker's answer was malformed", code="broker_unavailable")
        return {str(k): str(v) for k, v in states.items()}

    async def tool_arguments(self, resources: Sequence[str]) -> dict[str, dict[str, ArgSpec]]:
        doc = await self._post("/v1/gateway/arguments", {"resources": list(resources)})
        found = doc.get("arguments")
        if not isinstance(found, dict):
            raise Unavailable("the broker's answer was malformed", code="broker_unavailable")
        try:
            return {str(rid): parse_arg_specs(specs, f"broker: {rid}") for rid, specs in found.items()}
        except InvalidRequest as exc:
            raise Unavailable(
                f"the broker's answer was malformed: {exc.message}", code="broker_unavailable"
            ) from None

    async def aclose(self) -> None:
        await self._client.aclose()

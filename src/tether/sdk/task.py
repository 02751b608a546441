"""A task held by an agent: its token, and what the agent may do with it.

``with client.task(...) as task:`` makes the task *current* (a context variable that
:func:`tether.sdk.guard` reads) and closes it on exit, normal or exception, so every
credential of the task — and of every sub-agent it delegated to — dies with the block.

Context variables follow ``asyncio`` tasks and ``asyncio.to_thread``, not bare threads:
in a thread you start yourself, use ``with task.bind():``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tether.errors import Forbidden, Unavailable
from tether.model import Grant, Outcome
from tether.sdk import _wire as wire
from tether.sdk.errors import ApprovalRequired, ApprovalTimeout, Denied, NoActiveTask
from tether.sdk.models import Credential, Decision, Delegation, GrantLike, grants, ttl_seconds, unreadable

if TYPE_CHECKING:
    from tether.sdk.client import AsyncClient, Client

__all__ = ["AsyncTask", "Task", "current_task"]

log = logging.getLogger("tether.sdk")

_current: contextvars.ContextVar[Task | AsyncTask | None] = contextvars.ContextVar(
    "tether_task", default=None
)


def current_task() -> Task | AsyncTask:
    """The task of the enclosing ``with client.task(...)`` block; raises ``NoActiveTask``."""
    task = _current.get()
    if task is None:
        raise NoActiveTask(
            "no tether task is active here; run this inside `with client.task(...)` "
            "(or `with task.bind():` in a thread you started)"
        )
    return task


def raise_for_decision(d: Decision, action: str, resource: str) -> Decision:
    """Return an allow; raise ``ApprovalRequired`` or ``Denied`` for anything else."""
    if d.outcome is Outcome.ALLOW:
        return d
    if d.outcome is Outcome.APPROVAL_REQUIRED and d.approval_id:
        raise ApprovalRequired(
            f"`{action}` on `{resource}` needs a human's approval; ask an operator to run "
            f"`tether approve {d.approval_id}`, then call again with the same arguments",
            decision_id=d.decision_id,
            approval_id=d.approval_id,
            reasons=d.reasons,
            policy_version=d.policy_version,
        )
    raise Denied(
        f"`{action}` on `{resource}` was denied: {d.explain()}",
        decision_id=d.decision_id,
        reasons=d.reasons,
        policy_version=d.policy_version,
        code=d.code or "denied",
    )


def _poll_intervals(deadline: float) -> Iterator[float]:
    """Back off from 0.2 s to 2 s, never past ``deadline`` (monotonic)."""
    delay = 0.2
    while (left := deadline - time.monotonic()) > 0:
        yield min(delay, left)
        delay = min(delay * 1.6, 2.0)


def _authorize_body(
    action: str, resource: str, arguments: Mapping[str, Any] | None, method: str | None, path: str | None
) -> dict[str, Any]:
    context = wire.RequestContext(method or None, path or None) if method or path else None
    return wire.AuthorizeRequestBody(
        action, resource, dict(arguments) if arguments else None, context
    ).to_wire()


def _closed_ids(body: Mapping[str, Any]) -> list[str]:
    """The ids a close ended. The close itself succeeded (a 2xx): an answer this client
    cannot read only loses the list, it must not turn a finished ``with`` block into an error."""
    try:
        return list(wire.TaskClosed.from_wire(body).closed)
    except wire.WireError:
        return []


def _timeout_error(exc: ApprovalRequired, waited: float) -> ApprovalTimeout:
    return ApprovalTimeout(
        f"no one approved `{exc.approval_id}` within {waited:g}s; it stays pending "
        "until it expires — approve it and call again",
        decision_id=exc.decision_id,
        approval_id=exc.approval_id,
        reasons=exc.reasons,
        policy_version=exc.policy_version,
    )


class _TaskBase:
    def __init__(self, body: Mapping[str, Any]) -> None:
        try:
            opened = wire.TaskOpened.from_wire(body)
        except wire.WireError as exc:
            raise unreadable("task answer") from exc
        self.id: str = opened.task_id
        self.token: str = opened.task_token
        self.expires_at: float = opened.expires_at
        self.scope: tuple[Grant, ...] = tuple(Grant(g.action, g.resource) for g in opened.scope)
        self.depth: int = opened.depth
        self.parent_id: str | None = opened.parent_id
        self.closed = False
        self._ctx_tokens: list[contextvars.Token[Task | AsyncTask | None]] = []

    def __repr__(self) -> str:  # the token is a bearer credential: keep it out of reprs and logs
        return f"{type(self).__name__}(id={self.id!r}, depth={self.depth}, closed={self.closed})"

    def _push(self) -> None:
        self._ctx_tokens.append(_current.set(self))  # type: ignore[arg-type]

    def _pop(self) -> None:
        _current.reset(self._ctx_tokens.pop())


class Task(_TaskBase):
    """An open task (sync). Get one from :meth:`tether.sdk.Client.task`."""

    def __init__(self, client: Client, body: Mapping[str, Any]) -> None:
        super().__init__(body)
        self.client = client

    def check(
        self,
        action: str,
        resource: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> Decision:
        """Ask the broker; return the decision whatever it is (never raises on deny)."""
        body = _authorize_body(action, resource, arguments, method, path)
        return Decision.parse(self.client._call("POST", "/v1/authorize", token=self.token, json=body))

    def authorize(
        self,
        action: str,
        resource: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        wait_for_approval: float | None = None,
    ) -> Decision:
        """Return the allow decision (with its credential, if any); raise ``Denied`` otherwise.

        With ``wait_for_approval`` (seconds), an ``approval_required`` answer is asked
        again until a human approves, someone rejects it, or the wait ends
        (``ApprovalTimeout``).
        """
        try:
            return raise_for_decision(
                self.check(action, resource, arguments, method=method, path=path), action, resource
            )
        except ApprovalRequired as first:
            if not wait_for_approval:
                raise
            for delay in _poll_intervals(time.monotonic() + wait_for_approval):
                time.sleep(delay)
                d = self.check(action, resource, arguments, method=method, path=path)
                if d.outcome is not Outcome.APPROVAL_REQUIRED:
                    return raise_for_decision(d, action, resource)
            raise _timeout_error(first, wait_for_approval) from None

    def credential(self, service: str) -> Credential:
        """A credential for ``service`` (decided by policy as ``credential:issue``)."""
        d = self.authorize("credential:issue", service)
        if d.credential is None:
            raise Unavailable(
                f"the broker issued no credential for `{service}`; its catalog entry needs a `connector`",
                code="no_credential",
                decision_id=d.decision_id,
            )
        return d.credential

    def delegate(self, child: str, scope: Iterable[GrantLike], ttl: int | float | timedelta) -> Delegation:
        """Offer part of this task to ``child`` (a SPIFFE ID), redeemed with ``client.task(delegation=…)``."""
        body = wire.DelegateRequest(child, grants(scope), ttl_seconds(ttl)).to_wire()
        return Delegation.parse(
            self.client._call("POST", f"/v1/tasks/{self.id}/delegations", token=self.token, json=body)
        )

    def info(self) -> dict[str, Any]:
        return self.client._call("GET", f"/v1/tasks/{self.id}", token=self.token)

    def close(self) -> list[str]:
        """Close this task and every task it delegated to; returns the ids closed."""
        body = self.client._call("POST", f"/v1/tasks/{self.id}/close", token=self.token, json={})
        self.closed = True
        return _closed_ids(body)

    @contextlib.contextmanager
    def bind(self) -> Iterator[Task]:
        """Make this the current task without closing it at the end."""
        self._push()
        try:
            yield self
        finally:
            self._pop()

    def __enter__(self) -> Task:
        self._push()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pop()
        if self.closed:
            return
        try:
            self.close()
        except Exception as close_exc:
            if exc is None:
                raise
            # The block's own error is the one to see; the task still ends at its expiry.
            exc.add_note(f"tether: closing task {self.id} failed too: {close_exc}")
            log.warning("closing task %s failed: %s", self.id, close_exc)


class AsyncTask(_TaskBase):
    """An open task (asyncio). Get one from :meth:`tether.sdk.AsyncClient.task`."""

    def __init__(self, client: AsyncClient, body: Mapping[str, Any]) -> None:
        super().__init__(body)
        self.client = client
        # Sync tools that a framework runs in a worker thread authorize through this loop.
        self.loop = asyncio.get_running_loop()

    async def check(
        self,
        action: str,
        resource: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> Decision:
        body = _authorize_body(action, resource, arguments, method, path)
        return Decision.parse(await self.client._call("POST", "/v1/authorize", token=self.token, json=body))

    async def authorize(
        self,
        action: str,
        resource: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        wait_for_approval: float | None = None,
    ) -> Decision:
        try:
            d = await self.check(action, resource, arguments, method=method, path=path)
            return raise_for_decision(d, action, resource)
        except ApprovalRequired as first:
            if not wait_for_approval:
                raise
            for delay in _poll_intervals(time.monotonic() + wait_for_approval):
                await asyncio.sleep(delay)
                d = await self.check(action, resource, arguments, method=method, path=path)
                if d.outcome is not Outcome.APPROVAL_REQUIRED:
                    return raise_for_decision(d, action, resource)
            raise _timeout_error(first, wait_for_approval) from None

    def authorize_blocking(
        self,
        action: str,
        resource: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        wait_for_approval: float | None = None,
    ) -> Decision:
        """From a worker thread: authorize through the task's event loop and wait."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise Forbidden(
                "a sync guarded tool cannot block the event loop of its async task; make "
                "the tool `async def` or run it in a thread",
                code="blocking_call_in_event_loop",
            )
        fut = asyncio.run_coroutine_threadsafe(
            self.authorize(action, resource, arguments, wait_for_approval=wait_for_approval), self.loop
        )
        return fut.result()

    async def credential(self, service: str) -> Credential:
        d = await self.authorize("credential:issue", service)
        if d.credential is None:
            raise Unavailable(
                f"the broker issued no credential for `{service}`; its catalog entry needs a `connector`",
                code="no_credential",
                decision_id=d.decision_id,
            )
        return d.credential

    async def delegate(
        self, child: str, scope: Iterable[GrantLike], ttl: int | float | timedelta
    ) -> Delegation:
        body = wire.DelegateRequest(child, grants(scope), ttl_seconds(ttl)).to_wire()
        return Delegation.parse(
            await self.client._call("POST", f"/v1/tasks/{self.id}/delegations", token=self.token, json=body)
        )

    async def info(self) -> dict[str, Any]:
        return await self.client._call("GET", f"/v1/tasks/{self.id}", token=self.token)

    async def close(self) -> list[str]:
        body = await self.client._call("POST", f"/v1/tasks/{self.id}/close", token=self.token, json={})
        self.closed = True
        return _closed_ids(body)

    @contextlib.contextmanager
    def bind(self) -> Iterator[AsyncTask]:
        self._push()
        try:
            yield self
        finally:
            self._pop()

    async def __aenter__(self) -> AsyncTask:
        self._push()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pop()
        if self.closed:
            return
        try:
            await self.close()
        except Exception as close_exc:
            if exc is None:
                raise
            exc.add_note(f"tether: closing task {self.id} failed too: {close_exc}")
            log.warning("closing task %s failed: %s", self.id, close_exc)


class AsyncTaskOpener:
    """``async with client.task(...) as t`` or ``t = await client.task(...)``."""

    def __init__(self, open_: Callable[[], Any]) -> None:
        self._open = open_
        self._task: AsyncTask | None = None

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncTask:
        self._task = await self._open()
        return await self._task.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        await self._task.__aexit__(exc_type, exc, tb)

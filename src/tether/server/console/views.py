"""The console's pages: tasks, a task, live updates, approvals, the kill switch."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tether.audit import event as ev
from tether.audit.query import EventFilter, high_water
from tether.audit.verify import verify_chains
from tether.errors import InvalidRequest, NotFound, Unavailable
from tether.model import ApprovalState, TaskState
from tether.server.console import data, policy_history, tree
from tether.server.console.web import PREFIX, SECURITY_HEADERS, Console
from tether.server.signin import Human

STATES = [s.value for s in TaskState]
APPROVAL_STATES = [s.value for s in ApprovalState]
#: A live-update stream ends after this long; the browser reconnects by itself.
STREAM_SECONDS = 300.0
MAX_STREAMS = 64
KILL_WAIT_SECONDS = 15.0


def _q(request: Request, name: str, max_len: int = 256) -> str:
    value = request.query_params.get(name, "")
    if len(value) > max_len:
        raise InvalidRequest(
            f"`{name}` is longer than {max_len} characters", code="invalid_query", field=name
        )
    return value


class Views:
    def __init__(self, console: Console) -> None:
        self.c = console

    def read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with self.c.rt.db.read() as conn:
                return fn(conn, *args, **kwargs)

        return run_in_threadpool(run)

    # -- tasks -----------------------------------------------------------------------------
    async def tasks(self, request: Request, human: Human) -> Response:
        state = _q(request, "state")
        if state and state not in STATES:
            raise InvalidRequest(
                f"`state` must be one of {', '.join(STATES)}", code="invalid_query", field="state"
            )
        flt = {"agent": _q(request, "agent", 2048), "intent": _q(request, "intent", 64), "state": state}
        rows = await self.read(data.tasks, **flt)
        name = "tasks_rows.html" if request.query_params.get("fragment") else "tasks.html"
        return self.c.page(name, **self.c.ctx(request, human, tasks=rows, flt=flt, states=STATES))

    async def task(self, request: Request, human: Human) -> Response:
        page = await self.read(data.task_page, request.path_params["task_id"][:64])
        svg = tree.render(page.tree, page.task.id, PREFIX)
        return self.c.page("task.html", **self.c.ctx(request, human, p=page, svg=svg))

    async def events(self, request: Request, human: Human) -> Response:
        """Server-sent events: ``change`` whenever any audit chain grew (any replica)."""
        if self.c.streams >= MAX_STREAMS:
            raise Unavailable(
                "too many live-update streams; the page still works without them", code="too_many_streams"
            )

        async def stream() -> AsyncIterator[bytes]:
            self.c.streams += 1
            try:
                last = await self.read(high_water)
                yield b"retry: 2000\n\n"
                deadline = time.monotonic() + STREAM_SECONDS
                beat = time.monotonic()
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    if await request.is_disconnected():
                        return
                    now = await self.read(high_water)
                    if now != last:
                        last, beat = now, time.monotonic()
                        yield f"event: change\ndata: {json.dumps(sum(now.values()))}\n\n".encode()
                    elif time.monotonic() - beat > 15:
                        beat = time.monotonic()
                        yield b": keep-alive\n\n"
            finally:
                self.c.streams -= 1

        headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # -- decisions -------------------------------------------------------------------------
    async def decisions(self, request: Request, human: Human) -> Response:
        outcome = _q(request, "outcome")
        if outcome and outcome not in ("allow", "deny", "approval_required"):
            raise InvalidRequest("`outcome` must be allow, deny or approval_required", code="invalid_query")
        flt = {"outcome": outcome, "agent": _q(request, "agent", 2048)}
        rows = await self.read(data.decisions, **flt)
        name = "decisions_rows.html" if request.query_params.get("fragment") else "decisions.html"
        return self.c.page(name, **self.c.ctx(request, human, events=rows, flt=flt))

    # -- approvals -------------------------------------------------------------------------
    async def approvals(self, request: Request, human: Human) -> Response:
        state = _q(request, "state") or "pending"
        if state not in APPROVAL_STATES:
            raise InvalidRequest(
                f"`state` must be one of {', '.join(APPROVAL_STATES)}", code="invalid_query", field="state"
            )
        rows = await self.read(data.approvals, state=state, now=self.c.rt.broker.clock())
        name = "approvals_rows.html" if request.query_params.get("fragment") else "approvals.html"
        return self.c.page(
            name, **self.c.ctx(request, human, approvals=rows, state=state, states=APPROVAL_STATES)
        )

    async def approval(self, request: Request, human: Human) -> Response:
        aid = request.path_params["approval_id"][:64]
        rows = await self.read(data.approvals, approval_id=aid, now=self.c.rt.broker.clock())
        if not rows:
            raise NotFound(f"no approval `{aid}`", code="approval_not_found")
        return self.c.page("approval.html", **self.c.ctx(request, human, a=rows[0]))

    async def decide(self, request: Request, human: Human) -> Response:
        aid = request.path_params["approval_id"][:64]
        form = request.state.form
        verdict = form.get("decision")
        if verdict not in ("approve", "reject"):
            raise InvalidRequest("choose approve or reject", code="invalid_form", field="decision")
        comment = form.get("comment", "").strip()[:1000]
        broker = self.c.rt.broker

        def run() -> Any:
            return broker.decide_approval(
                aid, grant=verdict == "approve", by=human.audit_name[:256], comment=comment
            )

        decided = await run_in_threadpool(run)
        await self.c.audit_async(
            ev.CONSOLE_ACTION, human, f"approval.{verdict}", approval_id=aid, task=decided.task_id
        )
        return self.c.redirect(f"{PREFIX}/approvals/{aid}")

    # -- kill switch -----------------------------------------------------------------------
    async def kill(self, request: Request, human: Human) -> Response:
        return self.c.page(
            "kill.html",
            **self.c.ctx(
                request,
                human,
                plan=None,
                result=None,
                what=_q(request, "what") or "task",
                target=_q(request, "target", 2048),
            ),
        )

    def _what(self, form: dict[str, str]) -> tuple[str, str]:
        what = form.get("what", "")
        target = form.get("target", "").strip()[:2048]
        if what not in ("task", "agent", "everything"):
            raise InvalidRequest("choose a task, an agent or everything", code="invalid_form", field="what")
        if what != "everything" and not target:
            raise InvalidRequest(f"name the {what} to revoke", code="invalid_form", field="target")
        return what, ("" if what == "everything" else target)

    async def kill_preview(self, request: Request, human: Human) -> Response:
        what, target = self._what(request.state.form)
        plan = await self.read(data.kill_plan, what, target)
        return self.c.page(
            "kill.html", **self.c.ctx(request, human, plan=plan, result=None, what=what, target=target)
        )

    async def kill_execute(self, request: Request, human: Human) -> Response:
        what, target = self._what(request.state.form)
        plan = await self.read(data.kill_plan, what, target)
        lease_ids = [x.id for x in plan.leases]
        started = time.perf_counter()
        kwargs = (
            {"task_id": target}
            if what == "task"
            else {"agent": target}
            if what == "agent"
            else {"everything": True}
        )
        ended = await run_in_threadpool(lambda: self.c.rt.broker.revoke(by=human.audit_name[:256], **kwargs))
        # Measured, not promised: poll until every lease the plan named is revoked.
        left = len(lease_ids)
        while left and time.perf_counter() - started < KILL_WAIT_SECONDS:
            left = await self.read(data.unrevoked, lease_ids)
            if left:
                await asyncio.sleep(0.05)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        result = {"tasks": ended, "leases": len(lease_ids), "unrevoked": left, "ms": elapsed_ms}
        await self.c.audit_async(
            ev.CONSOLE_ACTION,
            human,
            "kill_switch",
            what=what,
            target=target or None,
            tasks=len(ended),
            leases=len(lease_ids),
            unrevoked=left,
            revoked_in_ms=elapsed_ms,
        )
        return self.c.page(
            "kill.html", **self.c.ctx(request, human, plan=plan, result=result, what=what, target=target)
        )

    # -- policy and audit ------------------------------------------------------------------
    async def policy(self, request: Request, human: Human) -> Response:
        history = await self.read(data.policy_events)
        versions = policy_history.versions(self.c.rt.settings.state_dir)
        a, b = _q(request, "a", 40), _q(request, "b", 40)
        diff = policy_history.diff(self.c.rt.settings.state_dir, a, b) if a and b else None
        failed = next((e for e in history if e.type == ev.POLICY_RELOAD_FAILED), None)
        loaded = next((e for e in history if e.type == ev.POLICY_LOADED), None)
        if failed is not None and loaded is not None and loaded.ts > failed.ts:
            failed_current = False
        else:
            failed_current = failed is not None
        return self.c.page(
            "policy.html",
            **self.c.ctx(
                request,
                human,
                version=self.c.rt.engine.bundle.version,
                files=list(self.c.rt.engine.bundle.files),
                history=history,
                versions=versions,
                a=a,
                b=b,
                diff=diff,
                failed=failed,
                failed_current=failed_current,
            ),
        )

    async def audit(self, request: Request, human: Human) -> Response:
        etype = _q(request, "type", 48)
        flt = EventFilter(
            task_id=_q(request, "task", 64) or None,
            tree=bool(_q(request, "task", 64)),
            types=(etype,) if etype else (),
            agent=_q(request, "agent", 2048) or None,
        )
        events = await self.read(data.audit_search, flt)
        report = None
        if request.query_params.get("verify"):
            report = await self.read(verify_chains)
            await self.c.audit_async(
                ev.CONSOLE_ACTION, human, "audit.verify", ok=report.ok, events=report.events
            )
        checkpoints = await self.read(data.latest_checkpoints)
        return self.c.page(
            "audit.html",
            **self.c.ctx(
                request,
                human,
                events=events,
                report=report,
                checkpoints=checkpoints,
                flt={"type": etype, "task": _q(request, "task", 64), "agent": _q(request, "agent", 2048)},
                types=sorted(ev.EVENT_TYPES),
            ),
        )

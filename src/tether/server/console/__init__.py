"""The operator console, served by the broker under ``/console`` (docs/console.md).

A layer of the runtime (``build``, called by ``Runtime.start``): it mounts a
server-rendered web app next to the API, adds the ``console.login_link`` admin
operation behind the admin socket's peer-credential check, snapshots policy versions,
and starts the approval notifier when configured.
Pages render without JavaScript; a small same-origin script only adds live updates.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tether.errors import InvalidRequest, NotFound, Unavailable
from tether.server.admin import OperationTable, Operator
from tether.server.console import notify, policy_history
from tether.server.console.auth_views import AuthViews
from tether.server.console.data import approvals
from tether.server.console.views import Views
from tether.server.console.web import PREFIX, SECURITY_HEADERS, Console

if TYPE_CHECKING:
    from tether.runtime import Core, Runtime

__all__ = ["OPERATIONS", "PREFIX", "Console", "build", "build_app"]

#: The console's admin operations (always there: they say when the console is off).
OPERATIONS = OperationTable()
operation = OPERATIONS.operation


def build_app(console: Console) -> Starlette:
    auth, v, g = AuthViews(console), Views(console), console.guard

    async def home(request: Request) -> Response:
        return console.redirect(PREFIX + "/tasks")

    async def not_found(request: Request, exc: Exception) -> Response:
        found = console.session(request)
        return console.page(
            "error.html",
            404,
            human=found[1] if found else None,
            csrf="",
            code="not_found",
            message="no such page",
        )

    static = StaticFiles(packages=[("tether.server.console", "static")])
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/login", auth.login),
            Route("/auth/start", auth.start),
            Route("/auth/callback", auth.callback),
            Route("/auth/link", auth.link),
            Route("/logout", g(auth.logout), methods=["POST"]),
            Route("/tasks", g(v.tasks)),
            Route("/tasks/{task_id}", g(v.task)),
            Route("/events", g(v.events)),
            Route("/decisions", g(v.decisions)),
            Route("/approvals", g(v.approvals)),
            Route("/approvals/{approval_id}", g(v.approval)),
            Route("/approvals/{approval_id}", g(v.decide, "approver"), methods=["POST"]),
            Route("/kill", g(v.kill, "admin")),
            Route("/kill/preview", g(v.kill_preview, "admin"), methods=["POST"]),
            Route("/kill/execute", g(v.kill_execute, "admin"), methods=["POST"]),
            Route("/policy", g(v.policy)),
            Route("/audit", g(v.audit)),
            Mount("/static", _StaticWithHeaders(static)),
        ]
    )
    app.add_exception_handler(404, not_found)
    return app


class _StaticWithHeaders:
    """Static assets with the console's security headers (and a short cache)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k != "Cache-Control"
                ]
                message["headers"] = [
                    *message.get("headers", []),
                    *headers,
                    (b"cache-control", b"max-age=300"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build(rt: Core) -> Console | None:
    """The console of this runtime (``Runtime.console``), or ``None`` when it is disabled."""
    rt.add_operations(OPERATIONS)
    if not rt.settings.console.enabled:
        return None
    console = Console(rt)
    rt.routes.append(Mount(PREFIX, app=build_app(console)))

    def snapshot_policy() -> None:
        bundle = rt.engine.bundle
        policy_history.snapshot(
            rt.settings.state_dir, rt.settings.policy_path, bundle.version, bundle.files, time.time()
        )

    snapshot_policy()
    rt.periodic.append(snapshot_policy)
    notify.install(rt, console)
    return console


@operation("console.login_link")
def login_link(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    """A one-time console link for the operator on the other end of the admin socket."""
    console = rt.console
    if console is None:
        raise Unavailable("the console is disabled (`console.enabled = false`)", code="console_disabled")
    return {"url": console.operator_link(op.uid), "expires_in": 60, "uid": op.uid}


@operation("approvals.show")
def approvals_show(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    """Everything the console's approval page shows, for `tether approvals show ID`."""
    aid = args.get("approval_id")
    if not isinstance(aid, str) or not aid:
        raise InvalidRequest("missing argument `approval_id`", code="missing_field", field="approval_id")
    with rt.db.read() as conn:
        found = approvals(conn, approval_id=aid[:64], now=rt.broker.clock())
    if not found:
        raise NotFound(f"no approval `{aid[:64]}`", code="approval_not_found")
    v = found[0]
    a, t = v.approval, v.task
    return {
        "approval_id": a.id,
        "state": a.state.value,
        "reason": a.reason,
        "task_id": a.task_id,
        "agent": t.agent if t else None,
        "intent": t.intent if t else None,
        "description": t.description if t else None,
        "delegator": v.delegator or None,
        "action": a.action,
        "resource": a.resource,
        "arguments": v.arguments,
        "masked": v.masked,
        "args_digest": a.args_digest,
        "risk": v.risk,
        "reasons": v.reasons,
        "policy_version": v.policy_version,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "decided_by": a.decided_by,
        "decided_at": a.decided_at,
        "comment": v.comment or None,
    }

"""The last line at the ASGI edge: an exception that escaped every handler becomes a JSON
500 ``internal_error`` that allows nothing, and is recorded as a deny in the audit log.

Handlers turn every expected failure into a ``TetherError`` with its own status; the tests
pin that no input reaches this. It is here so that a bug found later is a recorded deny
with a code, never a text/plain 500 and a missing record.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from tether.audit import event as ev

log = logging.getLogger("tether.http")


class CatchAll:
    def __init__(self, app: Any, runtime: Any) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            try:
                await run_in_threadpool(self._record, scope)
            except Exception:  # the store may be what failed: the answer is a deny anyway
                log.exception("could not record the internal error")
            if not started:
                response = JSONResponse(
                    {"code": "internal_error", "message": "internal error; nothing was allowed"},
                    status_code=500,
                )
                await response(scope, receive, send)

    def _record(self, scope: Any) -> None:
        broker = self.runtime.broker
        with broker.audit.unit() as u:
            u.emit(
                ev.DECISION,
                {
                    "action": "",
                    "resource": "",
                    "outcome": "deny",
                    "code": "internal_error",
                    "policy_version": broker.engine.bundle.version,
                    "request": {
                        "method": str(scope.get("method", ""))[:16],
                        "path": str(scope.get("path", ""))[:512],
                    },
                },
            )

"""The console's web plumbing: sessions, roles, CSRF, security headers, rendering, audit.

Every request goes through :meth:`Console.guard`: no session → the login page (never
data); a role too low → 403, audited; a POST without the session's CSRF token, or from
another origin → 403. Responses carry a strict Content-Security-Policy (scripts, styles
and connections from this origin only, no inline script or style, no framing).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import pwd
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tether.audit import event as ev
from tether.errors import Forbidden, InvalidRequest, PayloadTooLarge, TetherError
from tether.identity.keys import load_master_key
from tether.server.signin import Human, LoginLinks, OidcSignIn, Sealer, derive_key

log = logging.getLogger("tether.console")

PREFIX = "/console"
SESSION_COOKIE = "tether_console"
LOGIN_COOKIE = "tether_console_login"
MAX_FORM_BYTES = 64 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}

View = Callable[[Request, Human], Awaitable[Response]]


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def _pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


class Console:
    """State shared by the console's views: settings, keys, templates, the sign-in."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        cs = runtime.settings.console
        self.settings = cs
        host, port = runtime.settings.listen_host_port
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104  (display only)
        self.base_url = (cs.public_url or f"http://{shown}:{port}").rstrip("/")
        self.secure = self.base_url.startswith("https://")
        self.sealer = Sealer(
            derive_key(load_master_key(runtime.settings.state_dir), "tether console session v1")
        )
        self.links = LoginLinks(self.sealer)
        self.oidc = (
            OidcSignIn(cs.oidc, cs.roles, self.base_url + PREFIX + "/auth/callback")
            if cs.oidc.issuer
            else None
        )
        self.ended_sessions: set[str] = set()  # signed out here (best effort: cookies also expire)
        self.streams = 0
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(resources.files("tether.server.console") / "templates")),
            autoescape=True,
        )
        self.env.globals.update(prefix=PREFIX)
        self.env.filters.update(when=_when, clock=_clock, pretty=_pretty)

    # -- rendering -------------------------------------------------------------------------
    def page(self, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(**ctx)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error_page(self, exc: TetherError, human: Human | None = None) -> HTMLResponse:
        status = exc.status if 400 <= exc.status < 600 else 500
        return self.page("error.html", status, human=human, csrf="", code=exc.code, message=exc.message)

    def redirect(self, path: str) -> Response:
        return RedirectResponse(path, status_code=303, headers=SECURITY_HEADERS)

    # -- sessions --------------------------------------------------------------------------
    def session(self, request: Request) -> tuple[str, Human] | None:
        value = self.sealer.open(request.cookies.get(SESSION_COOKIE), "session")
        if value is None or value.get("sid") in self.ended_sessions:
            return None
        human = Human.from_dict(value.get("h") or {})
        return (str(value["sid"]), human) if human else None

    def start_session(self, response: Response, human: Human) -> None:
        sid = secrets.token_urlsafe(18)
        ttl = self.settings.session_ttl_seconds
        sealed = self.sealer.seal({"sid": sid, "h": human.to_dict()}, ttl, "session")
        response.set_cookie(
            SESSION_COOKIE,
            sealed,
            max_age=ttl,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=self.secure,
        )

    def end_session(self, response: Response, sid: str) -> None:
        self.ended_sessions.add(sid)
        response.delete_cookie(
            SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=self.secure
        )

    # -- audit -----------------------------------------------------------------------------
    def audit(self, type_: str, human: Human | None, action: str, **payload: Any) -> None:
        body = {"action": action, **{k: v for k, v in payload.items() if v is not None}}
        if human is not None:
            body.update(human=human.audit_name, role=human.role, via=human.via)
        with self.rt.audit.unit() as u:
            u.emit(type_, body)

    async def audit_async(self, type_: str, human: Human | None, action: str, **payload: Any) -> None:
        await run_in_threadpool(lambda: self.audit(type_, human, action, **payload))

    # -- requests --------------------------------------------------------------------------
    async def form(self, request: Request) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            raise InvalidRequest("send an HTML form", code="unsupported_media_type")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                raise PayloadTooLarge(f"the form exceeds {MAX_FORM_BYTES} bytes", limit=MAX_FORM_BYTES)
            chunks.append(chunk)
        try:
            parsed = parse_qs(b"".join(chunks).decode(), max_num_fields=50, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("the form is not valid UTF-8 form data", code="invalid_form") from None
        return {k: v[0] for k, v in parsed.items()}

    def same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
        parts = urlsplit(origin)
        return origin in (self.base_url, f"{request.url.scheme}://{request.url.netloc}") and bool(
            parts.netloc
        )

    def guard(self, view: View, role: str = "viewer") -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            found = self.session(request)
            if found is None:
                if request.method == "GET" and "text/event-stream" not in request.headers.get("accept", ""):
                    return self.redirect(f"{PREFIX}/login?next={quote(request.url.path, safe='/')}")
                return self.page("login.html", 401, human=None, csrf="", oidc=self.oidc is not None, next="")
            sid, human = found
            request.state.csrf = self.sealer.csrf(sid)
            request.state.sid = sid
            try:
                if request.method == "POST":
                    form = await self.form(request)
                    if not self.same_origin(request) or not self.sealer.check_csrf(sid, form.get("csrf")):
                        await self.audit_async(
                            ev.CONSOLE_REFUSED, human, "csrf_check", path=request.url.path[:200]
                        )
                        raise Forbidden(
                            "this form is stale or came from another site; reload the page",
                            code="csrf_failed",
                        )
                    request.state.form = form
                if not human.may(role):
                    await self.audit_async(
                        ev.CONSOLE_REFUSED, human, "role_check", path=request.url.path[:200], needed=role
                    )
                    raise Forbidden(
                        f"this needs the `{role}` role; you are `{human.role}`", code="role_required"
                    )
                return await view(request, human)
            except TetherError as exc:
                return self.error_page(exc, human)
            except Exception:
                log.exception("console error on %s", request.url.path)
                return self.page(
                    "error.html",
                    500,
                    human=human,
                    csrf="",
                    code="internal_error",
                    message="internal error; nothing was changed",
                )

        return handler

    def ctx(self, request: Request, human: Human, **extra: Any) -> dict[str, Any]:
        return {"human": human, "csrf": getattr(request.state, "csrf", ""), "path": request.url.path, **extra}

    def operator_link(self, uid: int) -> str:
        """A one-time login link for the operator whose uid the admin socket vouched for."""
        return f"{self.base_url}{PREFIX}/auth/link?t={quote(self.links.issue(uid, user_name(uid)), safe='')}"

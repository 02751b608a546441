"""Sign-in pages: the login page, the OIDC round trip, one-time links, sign-out."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tether.audit import event as ev
from tether.errors import TetherError
from tether.server.console.web import LOGIN_COOKIE, PREFIX, Console
from tether.server.signin import LOGIN_STATE_TTL, Human


def _next(value: str | None) -> str:
    # Only a console path: an open redirect would hand the session's first page to anyone.
    if value and value.startswith(PREFIX + "/") and "//" not in value and "\\" not in value:
        return value
    return PREFIX + "/tasks"


def _landing(c: Console, human: Human, target: str) -> Response:
    """The page that sets the session and moves on.

    A plain page (not a redirect) so that the next request starts on this site: browsers
    withhold SameSite=Strict cookies from a redirect chain that began at the issuer.
    """
    response = c.page("landing.html", human=human, csrf="", target=target)
    c.start_session(response, human)
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX + "/auth")
    return response


class AuthViews:
    def __init__(self, console: Console) -> None:
        self.c = console

    async def login(self, request: Request) -> Response:
        if self.c.session(request) is not None:
            return self.c.redirect(_next(request.query_params.get("next")))
        return self.c.page(
            "login.html",
            human=None,
            csrf="",
            oidc=self.c.oidc is not None,
            next=_next(request.query_params.get("next")),
        )

    async def start(self, request: Request) -> Response:
        if self.c.oidc is None:
            return self.c.redirect(PREFIX + "/login")
        try:
            url, remembered = await run_in_threadpool(self.c.oidc.start)
        except TetherError as exc:
            return self.c.error_page(exc)
        remembered["next"] = _next(request.query_params.get("next"))
        response = self.c.redirect(url)
        response.set_cookie(
            LOGIN_COOKIE,
            self.c.sealer.seal(remembered, LOGIN_STATE_TTL, "login-state"),
            max_age=int(LOGIN_STATE_TTL),
            path=PREFIX + "/auth",
            httponly=True,
            samesite="lax",  # must come back on the issuer's top-level redirect
            secure=self.c.secure,
        )
        return response

    async def callback(self, request: Request) -> Response:
        q = request.query_params
        remembered = self.c.sealer.open(request.cookies.get(LOGIN_COOKIE), "login-state")
        if self.c.oidc is None or remembered is None:
            return self.c.page(
                "login.html",
                400,
                human=None,
                csrf="",
                oidc=self.c.oidc is not None,
                next="",
                error="the sign-in took too long or started in another browser; try again",
            )
        if q.get("error"):
            return self.c.page(
                "login.html",
                401,
                human=None,
                csrf="",
                oidc=True,
                next="",
                error=f"the issuer refused the sign-in: {q.get('error', '')[:100]}",
            )
        oidc = self.c.oidc
        try:
            human = await run_in_threadpool(oidc.finish, q.get("code", ""), q.get("state", ""), remembered)
        except TetherError as exc:
            await self.c.audit_async(
                ev.CONSOLE_REFUSED,
                None,
                "signin",
                code=exc.code,
                who=str(exc.details.get("human", "")) or None,
            )
            return self.c.error_page(exc)
        await self.c.audit_async(ev.CONSOLE_SIGNIN, human, "signin", issuer=human.issuer)
        return _landing(self.c, human, _next(str(remembered.get("next", ""))))

    async def link(self, request: Request) -> Response:
        try:
            human = self.c.links.redeem(request.query_params.get("t", ""))
        except TetherError as exc:
            await self.c.audit_async(ev.CONSOLE_REFUSED, None, "login_link", code=exc.code)
            return self.c.error_page(exc)
        await self.c.audit_async(ev.CONSOLE_SIGNIN, human, "login_link")
        return _landing(self.c, human, PREFIX + "/tasks")

    async def logout(self, request: Request, human: Human) -> Response:
        response = self.c.redirect(PREFIX + "/login")
        self.c.end_session(response, request.state.sid)
        await self.c.audit_async(ev.CONSOLE_ACTION, human, "signout")
        return response

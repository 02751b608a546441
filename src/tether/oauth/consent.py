"""The consent page: the authorization endpoint, served inside the console.

It lives under ``/console/oauth`` so that the console's sign-in, session cookie and CSRF
tokens are the ones that protect it. ``GET /console/oauth/authorize`` checks the request
(client and redirect URI first: a bad one gets an error page, never a redirect), sends a
visitor without a session through the console's sign-in and back, then shows the client,
where the browser will go, an intent picker, the grants policy would allow for that
intent (untick to narrow) and a capped lifetime.

``POST /console/oauth/consent`` needs the session, its CSRF token and a same-origin
request; the sealed request it carries is bound to that session and is good once. An
approval opens the task by policy (``task:open``) with the human as delegator and the
client's agent identity as the agent, then redirects with a code, ``state`` and ``iss``.
"""

from __future__ import annotations

import secrets
import threading
import time
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tether.audit import event as ev
from tether.broker import OpenTaskRequest
from tether.errors import Forbidden, TetherError
from tether.model import Delegator, Grant
from tether.oauth.errors import OAuthError
from tether.oauth.grants import AuthzRequest, CodeGrant, allowed_grants, candidates, parse_authorize
from tether.oauth.server import OAuthServer
from tether.server.console.web import CSP, PREFIX, SECURITY_HEADERS, Console
from tether.server.signin import Human

CONSENT_TTL = 600.0
LIFETIMES = (
    (300, "5 minutes"),
    (900, "15 minutes"),
    (3600, "1 hour"),
    (8 * 3600, "8 hours"),
    (86400, "1 day"),
)


def _headers(redirect_uri: str) -> dict[str, str]:
    # The approval's answer redirects to the client: the form must be allowed to go there.
    parts = urlsplit(redirect_uri)
    target = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
    csp = CSP.replace("form-action 'self'", f"form-action 'self' {target}")
    return {**SECURITY_HEADERS, "Content-Security-Policy": csp}


class ConsentViews:
    def __init__(self, server: OAuthServer, console: Console) -> None:
        self.s, self.c = server, console
        here = jinja2.FileSystemLoader(str(resources.files("tether.oauth") / "templates"))
        assert console.env.loader is not None
        self.env = console.env.overlay(loader=jinja2.ChoiceLoader([here, console.env.loader]))
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def _page(self, name: str, status: int, headers: dict[str, str] | None = None, **ctx: Any) -> Response:
        html = self.env.get_template(name).render(prefix=PREFIX, **ctx)
        return HTMLResponse(html, status_code=status, headers=headers or SECURITY_HEADERS)

    def _error_page(self, exc: OAuthError, human: Human | None) -> Response:
        return self._page(
            "error.html",
            exc.status if exc.status < 500 else 400,
            human=human,
            csrf="",
            code=exc.error,
            message=exc.description,
        )

    async def _parse(self, params: dict[str, str]) -> AuthzRequest:
        return await run_in_threadpool(
            parse_authorize, params, self.s.clients, self.s.settings, self.s.rt.catalog
        )

    async def authorize(self, request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items()}
        found = self.c.session(request)
        human = found[1] if found else None
        try:
            req = await self._parse(params)
        except OAuthError as exc:
            await self.s.refused("authorize", exc, client_id=params.get("client_id", "")[:200] or None)
            if not exc.redirectable:
                return self._error_page(exc, human)
            return self.s.redirect_error(params.get("redirect_uri", ""), params.get("state", ""), exc)
        if found is None:
            target = request.url.path + "?" + request.url.query
            return RedirectResponse(
                f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303, headers=SECURITY_HEADERS
            )
        sid, human = found
        intents = sorted(self.s.rt.catalog.intents.items())
        cap = self.s.max_lifetime
        workload = req.client.agent(self.s.rt.settings.trust_domain)
        offered = candidates(req, self.s.rt.catalog)

        def pick() -> tuple[str, tuple[Grant, ...]]:
            # The intent asked for, else the first one policy allows this client anything for.
            wanted = params.get("intent", "")
            order = [wanted] if wanted in self.s.rt.catalog.intents else [n for n, _ in intents]
            for name in order:
                found = allowed_grants(self.s.rt.broker, workload, name, offered, cap, _delegator(human))
                if found:
                    return name, found
            return order[0] if order else "", ()

        intent, grants = await run_in_threadpool(pick)
        nonce = secrets.token_urlsafe(16)
        sealed = self.c.sealer.seal(
            {"r": req.to_dict(), "sid": sid, "n": nonce}, CONSENT_TTL, "oauth-consent"
        )
        lifetimes = [(s, label) for s, label in LIFETIMES if s < cap] + [
            (cap, f"{cap // 60} minutes (the most)")
        ]
        shown = {k: v for k, v in req.to_dict().items() if v}
        return self._page(
            "oauth_consent.html",
            200,
            _headers(req.redirect_uri),
            human=human,
            csrf=self.c.sealer.csrf(sid),
            client=req.client,
            resource=req.resource.uri,
            redirect_host=urlsplit(req.redirect_uri).netloc or req.redirect_uri,
            intents=intents,
            intent=intent,
            grants=grants,
            lifetimes=lifetimes,
            sealed=sealed,
            params=shown,
        )

    def _once(self, nonce: str, exp: float) -> bool:
        now = time.time()
        with self._lock:
            for n in [n for n, e in self._used.items() if e <= now]:
                del self._used[n]
            if nonce in self._used:
                return False
            self._used[nonce] = exp
            return True

    async def consent(self, request: Request) -> Response:
        found = self.c.session(request)
        if found is None:
            exc = OAuthError("access_denied", "sign in first; the consent form needs your session", 401)
            await self.s.refused("consent", exc)
            return self._error_page(exc, None)
        sid, human = found
        try:
            form = await self.c.form(request)
        except TetherError as bad:
            exc = OAuthError("invalid_request", bad.message)
            await self.s.refused("consent", exc, human=human.audit_name)
            return self._error_page(exc, human)
        if not self.c.same_origin(request) or not self.c.sealer.check_csrf(sid, form.get("csrf")):
            exc = OAuthError(
                "access_denied", "this form is stale or came from another site; start again", 403
            )
            await self.s.refused("consent", exc, human=human.audit_name, check="csrf")
            return self._error_page(exc, human)
        sealed = self.c.sealer.open(form.get("request"), "oauth-consent")
        if sealed is None or sealed.get("sid") != sid:
            exc = OAuthError(
                "invalid_request", "this consent expired or belongs to another session; start again"
            )
            await self.s.refused("consent", exc, human=human.audit_name)
            return self._error_page(exc, human)
        if not self._once(str(sealed.get("n")), float(sealed["_exp"])):
            exc = OAuthError("invalid_request", "this consent form was already submitted")
            await self.s.refused("consent", exc, human=human.audit_name, check="replay")
            return self._error_page(exc, human)
        try:
            req = await self._parse(dict(sealed["r"]))
        except OAuthError as exc:
            await self.s.refused("consent", exc, human=human.audit_name)
            return self._error_page(exc, human)
        try:
            code = await run_in_threadpool(self._approve, req, human, form)
        except OAuthError as exc:
            await self.s.refused("consent", exc, human=human.audit_name, client_id=req.client.client_id)
            return self.s.redirect_error(req.redirect_uri, req.state, exc)
        query = {"code": code, "iss": self.s.issuer}
        if req.state:
            query["state"] = req.state
        return RedirectResponse(
            self.s.with_query(req.redirect_uri, query), status_code=303, headers=SECURITY_HEADERS
        )

    def _approve(self, req: AuthzRequest, human: Human, form: dict[str, str]) -> str:
        if form.get("decision") != "approve":
            raise OAuthError("access_denied", "the user denied the request")
        intent = form.get("intent", "")
        lifetime = form.get("lifetime", "")
        cap = self.s.max_lifetime
        if not lifetime.isdigit() or not 60 <= int(lifetime) <= cap:
            raise OAuthError("invalid_request", f"the lifetime must be between 60 and {cap} seconds")
        chosen = []
        for key, value in form.items():
            if key.startswith("g") and key[1:].isdigit():
                action, _, resource = value.partition("@")
                chosen.append(Grant(action, resource))
        if not chosen:
            raise OAuthError("invalid_scope", "no grant was chosen")
        broker, rt = self.s.rt.broker, self.s.rt
        workload = req.client.agent(rt.settings.trust_domain)
        offered = set(candidates(req, rt.catalog))
        allowed = set(
            allowed_grants(broker, workload, intent, list(offered), int(lifetime), _delegator(human))
        )
        if not set(chosen) <= allowed:
            raise OAuthError("invalid_scope", "a chosen grant is not one this consent offered")
        try:
            opened = broker.open_task(
                workload,
                OpenTaskRequest(
                    intent=intent,
                    description=f"OAuth consent by {human.audit_name} for {req.client.name}"[:500],
                    scope=tuple(chosen),
                    ttl_seconds=int(lifetime),
                    delegator=_delegator(human),
                ),
            )
        except Forbidden as exc:
            raise OAuthError("access_denied", f"policy does not allow this task ({exc.code})") from None
        except TetherError as exc:
            raise OAuthError("invalid_request", exc.message) from None
        code = self.s.codes.issue(
            CodeGrant(
                opened.task.id, req.client.client_id, req.redirect_uri, req.challenge, req.resource.uri, 0
            )
        )
        self.s.audit(
            ev.OAUTH_GRANTED,
            "consent",
            human=human.audit_name,
            client_id=req.client.client_id,
            client_kind=req.client.kind,
            task_id=opened.task.id,
            agent=opened.task.agent,
            intent=intent,
            scope=[g.to_dict() for g in chosen],
            lifetime=int(lifetime),
        )
        return code


def _delegator(human: Human) -> Delegator:
    return Delegator(subject=human.subject, issuer=human.issuer or "tether-console")

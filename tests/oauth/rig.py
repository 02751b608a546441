"""The OAuth test rig: a real broker (HTTP, console with OIDC sign-in, authorization server)
and a real MCP gateway in front of `mcp-server-time`, both served by uvicorn on loopback in
one background thread; plus a headless browser (httpx with a cookie jar) that goes through
the same HTML pages and forms a person would."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import httpx
import uvicorn

from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.mcp import McpGateway, Upstream
from tether.gateway.oauth_resource import ProtectedResource
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import TestTrustDomain, make_settings
from tether.testing.oidc import TestOidcIssuer

TIME = Upstream(command=[sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"])
CLIENT_ID = "mcp-desktop"
USERS = {
    "alice": {"email": "alice@example.com", "groups": ["staff"]},
    "nobody": {"email": "nobody@example.com", "groups": []},
    "ci-runner": {"email": "ci@example.com", "groups": []},
}
CATALOG_SERVICES = """
  - {id: time, sensitivity: public, environment: prod, egress: internal, owner: team-platform}
"""
CATALOG_TOOLS = """
  - {id: time.get_current_time, service: time}
  - {id: time.convert_time, service: time}
"""
# OAuth clients are agents of their own kind: policy can single them out.
POLICY = """
@id("oauth-clients-triage-only")
@reason("OAuth clients may open tasks for support.triage only")
forbid (principal, action == Tether::Action::"task:open", resource)
when { principal.attestation == "oauth-client" && context.task.intent != "support.triage" };

@id("triage-opens-nothing-on-billing")
@reason("support.triage tasks never hold billing grants")
forbid (principal, action == Tether::Action::"task:open", resource in Tether::Service::"billing")
when { context.task.intent == "support.triage" };

@id("oauth-time-open")
permit (principal, action == Tether::Action::"task:open", resource in Tether::Service::"time")
when { context.task.intent == "support.triage" };

@id("oauth-time-now")
permit (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"time.get_current_time")
when { context.task.intent == "support.triage" };

@id("oauth-no-convert")
@reason("OAuth clients may not convert times")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"time.convert_time")
when { principal.attestation == "oauth-client" };
"""


def bound_socket() -> socket.socket:
    """A listening socket on a free loopback port, kept open and handed to uvicorn (no race
    between choosing a port and binding it)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def oauth_config(idp: str, broker_port: int, gateway_port: int, extra: str = "", tables: str = "") -> str:
    return f"""
[console]
public_url = "http://127.0.0.1:{broker_port}"

[console.oidc]
issuer = "{idp}"
client_id = "tether-console"

[console.roles]
viewer = ["staff"]

[oauth]
enabled = true
max_lifetime_seconds = 1800
{extra}

[[oauth.clients]]
client_id = "{CLIENT_ID}"
name = "Desktop MCP client"
redirect_uris = ["http://127.0.0.1/callback"]

[[oauth.resources]]
uri = "http://127.0.0.1:{gateway_port}/mcp"
server = "time"
{tables.replace("IDP", idp)}
"""


@dataclass
class Stack:
    rt: Runtime
    idp: TestOidcIssuer
    broker_url: str
    gateway_url: str
    gateway: McpGateway

    @property
    def resource(self) -> str:
        return self.gateway_url

    @property
    def issuer(self) -> str:
        assert self.rt.oauth is not None
        return self.rt.oauth.issuer


@contextlib.contextmanager
def oauth_stack(
    tmp: Path, domain: TestTrustDomain, *, oauth_extra: str = "", tables: str = ""
) -> Iterator[Stack]:
    """``tables``: more TOML tables for the broker's config (``IDP`` is the test issuer's URL)."""
    bsock, gsock = bound_socket(), bound_socket()
    bport, gport = bsock.getsockname()[1], gsock.getsockname()[1]
    callback = f"http://127.0.0.1:{bport}/console/auth/callback"
    with TestOidcIssuer(users=USERS, client_id="tether-console", redirect_uris=[callback]) as idp:
        settings = make_settings(
            tmp / "state",
            store_url=f"sqlite:///{tmp / 'tether.db'}",
            domain=domain,
            overrides={"environment": "prod", "listen": f"127.0.0.1:{bport}"},
            config_extra=oauth_config(idp.issuer, bport, gport, oauth_extra, tables),
        )
        catalog = settings.catalog_path.read_text()
        catalog = catalog.replace(
            "\ntools:\n", CATALOG_SERVICES + "\ntools:\n" + CATALOG_TOOLS.lstrip("\n"), 1
        )
        settings.catalog_path.write_text(catalog)
        (settings.policy_path / "50-oauth.cedar").write_text(POLICY)
        rt = Runtime.start(settings)
        assert rt.oauth is not None
        resource = ProtectedResource(f"http://127.0.0.1:{gport}/mcp", (rt.oauth.issuer,), "time")
        gateway = McpGateway("time", LocalAuthorizer(rt), resource=resource)
        stop = threading.Event()
        started = threading.Event()
        failed: list[BaseException] = []

        async def serve() -> None:
            async with gateway.connect(TIME):
                servers = [
                    uvicorn.Server(uvicorn.Config(app, log_level="warning"))
                    for app in (create_app(rt), gateway.http_app())
                ]
                async with anyio.create_task_group() as tg:
                    for s, sock in zip(servers, (bsock, gsock), strict=True):
                        tg.start_soon(lambda s=s, sock=sock: s.serve(sockets=[sock]))
                    with anyio.fail_after(30):
                        while not all(s.started for s in servers):
                            await anyio.sleep(0.01)
                    started.set()
                    while not stop.is_set():
                        await anyio.sleep(0.05)
                    for s in servers:
                        s.should_exit = True

        def run() -> None:
            try:
                anyio.run(serve)
            except BaseException as exc:  # surfaced to the test below
                failed.append(exc)
                started.set()

        thread = threading.Thread(target=run, name="oauth-stack", daemon=True)
        thread.start()
        try:
            assert started.wait(60) and not failed, f"the stack did not start: {failed}"
            yield Stack(rt, idp, f"http://127.0.0.1:{bport}", resource.resource, gateway)
        finally:
            stop.set()
            thread.join(timeout=30)
            rt.close()
            bsock.close()
            gsock.close()


class _Forms(HTMLParser):
    """Every form on a page: action, method, and the values a browser would submit."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []
        self.refresh: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(
                {
                    "action": a.get("action", ""),
                    "method": a.get("method", "get"),
                    "fields": {},
                    "id": a.get("id", ""),
                }
            )
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a.get("content", "").split("url=", 1)[-1]
        elif self.forms and tag == "input":
            kind = a.get("type", "text")
            if kind in ("hidden", "text") or (kind == "checkbox" and "checked" in a):
                self.forms[-1]["fields"][a.get("name", "")] = a.get("value", "")
        elif self.forms and tag == "select":
            self._select = a.get("name", "")
        elif self.forms and tag == "option" and self._select:
            fields = self.forms[-1]["fields"]
            if self._select not in fields or "selected" in a:
                fields[self._select] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def parse_page(html: str) -> _Forms:
    p = _Forms()
    p.feed(html)
    return p


class Browser:
    """A person's browser, headless: follows redirects within the broker and the issuer,
    signs in at the issuer's page, and stops at the client's redirect URI."""

    def __init__(self, stack: Stack, user: str = "alice") -> None:
        self.stack, self.user = stack, user
        self.http = httpx.Client(follow_redirects=False, timeout=15.0)
        self.consent_page: httpx.Response | None = None

    def close(self) -> None:
        self.http.close()

    def _follow(self, resp: httpx.Response, stop_at: str) -> httpx.Response | str:
        for _ in range(20):
            if resp.status_code in (302, 303):
                target = urljoin(str(resp.request.url), resp.headers["location"])
                if target.startswith(stop_at):
                    return target
                resp = self.http.get(target)
                continue
            return resp
        raise AssertionError("too many redirects")

    def sign_in_and_open_consent(self, authorize_url: str, redirect_uri: str) -> httpx.Response | str:
        """From the client's authorization URL to the consent page (signing in on the way)."""
        resp = self._follow(self.http.get(authorize_url), redirect_uri)
        if isinstance(resp, str) or "/console/login" not in str(resp.request.url):
            return resp
        page = parse_page(resp.text)
        start = next(h for h in page.links if "/auth/start" in h)
        resp = self._follow(self.http.get(urljoin(str(resp.request.url), start)), redirect_uri)
        assert not isinstance(resp, str)
        issuer_form = parse_page(resp.text).forms[0]
        back = self.http.post(
            urljoin(str(resp.request.url), issuer_form["action"]),
            data={**issuer_form["fields"], "user": self.user},
        )
        landing = self._follow(back, redirect_uri)
        assert not isinstance(landing, str) and landing.status_code == 200, getattr(landing, "text", landing)
        target = parse_page(landing.text).refresh
        assert target, landing.text
        return self._follow(self.http.get(urljoin(self.stack.broker_url, target)), redirect_uri)

    def consent(
        self, page: httpx.Response, redirect_uri: str, *, decision: str = "approve", **override: str
    ) -> httpx.Response | str:
        """Submit the consent form as shown (every offered grant ticked), changing ``override``."""
        self.consent_page = page
        form = next(f for f in parse_page(page.text).forms if f["id"] == "consent")
        data = {**form["fields"], "decision": decision, **override}
        resp = self.http.post(
            urljoin(self.stack.broker_url, form["action"]),
            data=data,
            headers={"origin": self.stack.broker_url},
        )
        return self._follow(resp, redirect_uri)

    def authorize(self, authorize_url: str, redirect_uri: str, **override: str) -> dict[str, str]:
        """The whole person's part: sign in, approve; returns the query the client gets back."""
        page = self.sign_in_and_open_consent(authorize_url, redirect_uri)
        assert not isinstance(page, str), f"sent back before consent: {page}"
        assert page.status_code == 200, page.text
        back = self.consent(page, redirect_uri, **override)
        assert isinstance(back, str), getattr(back, "text", back)
        return {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)

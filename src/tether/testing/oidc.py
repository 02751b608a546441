"""A small, real OIDC issuer for tests: discovery, JWKS, authorize (a login form), token.

It speaks the authorization code flow with PKCE (S256 only) over real HTTP on a loopback
port, so a browser can sign in through it::

    with TestOidcIssuer(users={"alice": {"email": "alice@example.com", "groups": ["ops"]}},
                        client_id="console", redirect_uris=[".../console/auth/callback"]) as idp:
        idp.issuer  # "http://127.0.0.1:PORT"

The authorize page lists the users as buttons ("Sign in as alice"). Codes are single use
and bound to the client, the redirect URI and the PKCE challenge; ID tokens are ES256.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tether.identity.jwt import public_jwk, sign_jwt

__all__ = ["TestOidcIssuer"]


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class TestOidcIssuer:
    """An issuer on ``127.0.0.1:<free port>``, served by uvicorn in a thread while entered."""

    __test__ = False

    def __init__(
        self,
        *,
        users: Mapping[str, Mapping[str, Any]],
        client_id: str,
        redirect_uris: Iterable[str] = (),
        token_ttl: int = 300,
    ) -> None:
        self.users = {k: dict(v) for k, v in users.items()}
        self.client_id = client_id
        self.redirect_uris = set(redirect_uris)
        self.token_ttl = token_ttl
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = secrets.token_hex(8)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._codes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        #: Every token request, for tests that look at what the relying party sent.
        self.token_requests: list[dict[str, str]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- endpoints -------------------------------------------------------------------------
    async def _discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "subject_types_supported": ["public"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [public_jwk(self.key.public_key(), self.kid)]})

    def _check_authorize(self, q: Mapping[str, str]) -> str | None:
        if q.get("client_id") != self.client_id:
            return "unknown client_id"
        if q.get("redirect_uri") not in self.redirect_uris:
            return "redirect_uri not registered"
        if q.get("response_type") != "code":
            return "response_type must be code"
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return "PKCE with S256 is required"
        return None

    async def _authorize_page(self, request: Request) -> Response:
        q = dict(request.query_params)
        problem = self._check_authorize(q)
        if problem:
            return HTMLResponse(f"<h1>bad request</h1><p>{html.escape(problem)}</p>", status_code=400)
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in q.items()
        )
        buttons = "".join(
            f'<button name="user" value="{html.escape(u)}">Sign in as {html.escape(u)}</button>'
            for u in self.users
        )
        return HTMLResponse(
            f"<!doctype html><title>Test issuer</title><h1>Test OIDC issuer</h1>"
            f'<form method="post" action="/authorize">{hidden}{buttons}</form>'
        )

    async def _authorize_submit(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        problem = self._check_authorize(form)
        user = form.get("user", "")
        if problem or user not in self.users:
            return HTMLResponse("<h1>bad request</h1>", status_code=400)
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = {
                "user": user,
                "redirect_uri": form["redirect_uri"],
                "challenge": form["code_challenge"],
                "nonce": form.get("nonce"),
                "exp": time.time() + 60,
            }
        target = form["redirect_uri"] + "?" + urlencode({"code": code, "state": form.get("state", "")})
        return RedirectResponse(target, status_code=303)

    async def _token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.token_requests.append(form)
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)  # single use
        if (
            grant is None
            or grant["exp"] < time.time()
            or form.get("grant_type") != "authorization_code"
            or form.get("client_id") != self.client_id
            or form.get("redirect_uri") != grant["redirect_uri"]
            or _s256(form.get("code_verifier", "")) != grant["challenge"]
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": grant["user"],
            "aud": self.client_id,
            "iat": now,
            "exp": now + self.token_ttl,
            **self.users[grant["user"]],
        }
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        token = sign_jwt(claims, self.key, kid=self.kid, typ="JWT")
        return JSONResponse(
            {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "id_token": token}
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/jwks", self._jwks),
                Route("/authorize", self._authorize_page, methods=["GET"]),
                Route("/authorize", self._authorize_submit, methods=["POST"]),
                Route("/token", self._token, methods=["POST"]),
            ]
        )

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> TestOidcIssuer:
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="test-oidc-issuer", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test OIDC issuer did not start")
            time.sleep(0.01)  # bounded wait for uvicorn to bind
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

"""The authorization server's HTTP endpoints (Starlette): metadata, token, revocation.

The consent page (the authorization endpoint) is :mod:`tether.oauth.consent`; both share
:class:`OAuthServer`. Every refusal answers the OAuth ``error`` code its RFC names and is
an ``oauth.refused`` audit event; nothing a client sends makes a 5xx.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from tether.audit import event as ev
from tether.config_oauth import OAuthSettings
from tether.errors import TetherError, Unauthenticated, Unavailable
from tether.identity.dpop import DpopProof
from tether.oauth import exchange
from tether.oauth.cimd import CimdFetcher
from tether.oauth.clients import Clients
from tether.oauth.errors import OAuthError
from tether.oauth.grants import Codes, RefreshGrant, RefreshTokens, ReplayedCode, ReplayedRefresh
from tether.oauth.metadata import TOKEN_EXCHANGE, authorization_server_metadata, endpoint, issuer_for

if TYPE_CHECKING:
    from tether.identity.service import IdentityService
    from tether.runtime import Core

log = logging.getLogger("tether.oauth")
MAX_FORM_BYTES = 32 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; a repeated parameter is refused (RFC 6749 §3.1)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "send `application/x-www-form-urlencoded`")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", f"the request exceeds {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    try:
        parsed = parse_qs(b"".join(chunks).decode(), max_num_fields=40, keep_blank_values=False)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not valid form data") from None
    repeated = sorted(k for k, v in parsed.items() if len(v) > 1)
    if repeated:
        raise OAuthError("invalid_request", f"`{repeated[0][:40]}` is sent more than once")
    return {k: v[0] for k, v in parsed.items()}


class OAuthServer:
    """State of the authorization server: settings, clients, codes, and the broker parts."""

    def __init__(self, rt: Core, identity: IdentityService, base_url: str) -> None:
        self.rt = rt
        self.identity = identity
        self.settings: OAuthSettings = rt.settings.oauth
        self.issuer = self.settings.issuer or issuer_for(base_url)
        self.fetcher = (
            CimdFetcher(
                max_bytes=self.settings.cimd_max_bytes,
                timeout=float(self.settings.cimd_timeout_seconds),
                allow_private=self.settings.cimd_allow_private,
                ca_file=self.settings.cimd_ca_file,
            )
            if self.settings.client_metadata_documents
            else None
        )
        self.clients = Clients(self.settings, self.fetcher)
        self.codes = Codes(self.settings.code_ttl_seconds, clock=rt.broker.clock)
        self.refresh_tokens = RefreshTokens(clock=rt.broker.clock)

    @property
    def max_lifetime(self) -> int:
        return min(self.settings.max_lifetime_seconds, self.rt.settings.tasks.max_ttl_seconds)

    def close(self) -> None:
        if self.fetcher is not None:
            self.fetcher.close()

    # -- audit -----------------------------------------------------------------------------
    def audit(self, type_: str, what: str, **payload: Any) -> None:
        body = {"action": what, **{k: v for k, v in payload.items() if v is not None}}
        with self.rt.audit.unit() as u:
            u.emit(type_, body)

    async def refused(self, what: str, exc: OAuthError, **payload: Any) -> None:
        await run_in_threadpool(
            lambda: self.audit(
                ev.OAUTH_REFUSED, what, error=exc.error, reason=exc.description[:300], **payload
            )
        )

    def error_response(self, exc: OAuthError) -> JSONResponse:
        headers = dict(NO_STORE)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="tether"'  # RFC 6749 §5.2 invalid_client
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

    def redirect_error(self, redirect_uri: str, state: str, exc: OAuthError) -> Response:
        """An authorization error sent back to a client whose redirect URI checked out."""
        query = {"error": exc.error, "error_description": exc.description[:200], "iss": self.issuer}
        if state:
            query["state"] = state
        return RedirectResponse(self.with_query(redirect_uri, query), status_code=303, headers=NO_STORE)

    @staticmethod
    def with_query(uri: str, query: dict[str, str]) -> str:
        return uri + ("&" if "?" in uri else "?") + urlencode(query)

    # -- endpoints -------------------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        scopes = [f"tool:call@{r.server}" for r in self.settings.resources]
        doc = authorization_server_metadata(self.issuer, cimd=self.fetcher is not None, scopes=scopes)
        return JSONResponse(doc, headers={"Cache-Control": "max-age=300", "Access-Control-Allow-Origin": "*"})

    def _dpop(self, request: Request) -> DpopProof:
        """The token request's DPoP proof (RFC 9449 §5), bound to the advertised token endpoint."""
        values = request.headers.getlist("dpop")
        return DpopProof(
            values[0] if values else None, "POST", endpoint(self.issuer, "/oauth/token"), len(values)
        )

    def _bind(self, proof: DpopProof) -> str | None:
        """The DPoP key the new tokens are bound to (None: bearer, where the broker allows it)."""
        try:
            return self.identity.bind_at_open(proof)
        except Unauthenticated as exc:
            raise OAuthError("invalid_dpop_proof", f"{exc.message} ({exc.code})") from None

    async def token(self, request: Request) -> Response:
        grant_type = ""
        try:
            form = await read_form(request)
            grant_type = form.get("grant_type", "")
            proof = self._dpop(request)
            if grant_type == "authorization_code":
                body = await run_in_threadpool(self._code_grant, form, proof)
            elif grant_type == "refresh_token":
                body = await run_in_threadpool(self._refresh_grant, form, proof)
            elif grant_type == TOKEN_EXCHANGE:
                body = await run_in_threadpool(exchange.exchange, self, form)
            elif not grant_type:
                raise OAuthError("invalid_request", "`grant_type` is required")
            else:
                raise OAuthError("unsupported_grant_type", f"`{grant_type[:60]}` is not supported")
        except OAuthError as exc:
            await self.refused("token", exc, grant_type=grant_type[:80] or None)
            return self.error_response(exc)
        return JSONResponse(body, headers=NO_STORE)

    def _code_grant(self, form: dict[str, str], proof: DpopProof) -> dict[str, Any]:
        client = self.clients.get(form.get("client_id"))
        jkt = self._bind(proof)  # before the code is spent: a bad proof leaves it usable
        try:
            grant = self.codes.redeem(
                form.get("code"),
                client_id=client.client_id,
                redirect_uri=form.get("redirect_uri", ""),
                verifier=form.get("code_verifier"),
                resource=form.get("resource"),
            )
        except ReplayedCode as replay:
            # Someone else may hold the first token: end the task it opened (RFC 6749 §4.1.2).
            self.rt.broker.revoke(task_id=replay.grant.task_id, by=f"oauth:code-replay:{client.client_id}")
            raise
        return self._issue(grant.task_id, client.client_id, grant.resource, "token", jkt)

    def _refresh_grant(self, form: dict[str, str], proof: DpopProof) -> dict[str, Any]:
        client = self.clients.get(form.get("client_id"))
        jkt = self._bind(proof)
        try:
            grant = self.refresh_tokens.use(
                form.get("refresh_token"), client_id=client.client_id, resource=form.get("resource")
            )
        except ReplayedRefresh as replay:
            self.rt.broker.revoke(task_id=replay.grant.task_id, by=f"oauth:refresh-replay:{client.client_id}")
            raise
        if grant.jkt is not None and jkt != grant.jkt:
            raise OAuthError("invalid_dpop_proof", "this refresh token is bound to another DPoP key")
        return self._issue(grant.task_id, client.client_id, grant.resource, "refresh", jkt)

    def _issue(
        self, task_id: str, client_id: str, resource: str, what: str, jkt: str | None
    ) -> dict[str, Any]:
        """An access token for the task (short-lived, for one resource) and the next refresh token."""
        try:
            task, _ = self.rt.broker.get_task(task_id)
        except TetherError:
            raise OAuthError("invalid_grant", "the task of this grant is gone") from None
        now = self.rt.broker.clock()
        if not task.is_active(now):
            raise OAuthError("invalid_grant", "the task of this grant is closed, expired or revoked")
        expires = min(task.expires_at, now + self.settings.access_token_ttl_seconds)
        token = self.rt.broker.tokens.mint(
            task, now=now, audience=resource, client_id=client_id, expires_at=expires, jkt=jkt
        )
        refresh = self.refresh_tokens.issue(RefreshGrant(task.id, client_id, resource, task.expires_at, jkt))
        self.audit(
            ev.OAUTH_GRANTED,
            what,
            client_id=client_id,
            task_id=task.id,
            resource=resource,
            expires_at=expires,
            sender_constrained=jkt is not None,
        )
        return {
            "access_token": token,
            "token_type": "DPoP" if jkt else "Bearer",
            "expires_in": max(1, int(expires - now)),
            "refresh_token": refresh,
            "scope": " ".join(f"{g.action}@{g.resource}" for g in task.scope),
        }

    async def revoke(self, request: Request) -> Response:
        try:
            form = await read_form(request)
            await run_in_threadpool(self._revoke, form)
        except OAuthError as exc:
            await self.refused("revoke", exc)
            return self.error_response(exc)
        return JSONResponse({}, headers=NO_STORE)

    def _revoke(self, form: dict[str, str]) -> None:
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "`token` is required")
        broker = self.rt.broker
        refresh = self.refresh_tokens.find(token)
        issued_to: str | None
        if refresh is not None:
            task_id, issued_to, agent = refresh.task_id, refresh.client_id, ""
        else:
            aud = peek_audience(token, self.rt.settings.limits.max_token_bytes)
            audiences = {r.uri for r in self.settings.resources} | {self.rt.settings.broker_audience}
            if not isinstance(aud, str) or aud not in audiences:
                return  # RFC 7009 §2.2: an invalid token is no error (nothing to revoke)
            try:
                verified = broker.tokens.verify(token, now=broker.clock(), audience=aud)
            except Unauthenticated:
                return
            raw = verified.raw.get("client_id")
            task_id, issued_to, agent = (
                verified.task_id,
                raw if isinstance(raw, str) else None,
                verified.agent,
            )
        if issued_to is not None and issued_to != form.get("client_id"):
            raise OAuthError("invalid_client", "the token was issued to another client")
        by = f"oauth-client:{issued_to}" if issued_to is not None else f"token-holder:{agent}"
        try:
            closed = broker.close_task(task_id, by=by)
        except TetherError:
            closed = []  # already gone: revocation is idempotent
        self.audit(ev.OAUTH_GRANTED, "revoke", task_id=task_id, closed=closed, client_id=issued_to)


def unavailable(exc: Unavailable) -> OAuthError:
    return OAuthError("temporarily_unavailable", exc.message)


def peek_audience(token: str, max_bytes: int) -> str | None:
    """The unverified ``aud`` of a JWT, only to choose the audience to verify it for."""
    try:
        if len(token) > max_bytes:
            return None
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError, RecursionError):
        return None
    aud = claims.get("aud") if isinstance(claims, dict) else None
    return aud if isinstance(aud, str) else None

"""What a consent or a token exchange grants: a task, opened by policy (pure of any web framework).

* :func:`parse_authorize` — an authorization request, checked in the order RFC 6749
  §4.1.2.1 demands: the client and its redirect URI first (a bad one is never redirected
  to), then everything else (refused back to the client with ``state`` and ``iss``).
* :func:`allowed_grants` — which of the candidate grants policy would let this client
  open a task with, for this intent: what the consent page offers.
* :class:`Codes` — authorization codes: random, short-lived, bound to the client, the
  redirect URI, the PKCE challenge and the resource; single use, and a replayed code
  revokes the task it opened (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tether import actions
from tether.broker import Broker
from tether.catalog import Catalog
from tether.config_oauth import OAuthResource, OAuthSettings
from tether.model import Delegator, Grant, Task, TaskState, Workload
from tether.oauth import pkce
from tether.oauth.clients import Client, Clients
from tether.oauth.errors import OAuthError
from tether.oauth.metadata import parse_scope

MAX_STATE = 512
TOOL_CALL = "tool:call"


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    client: Client
    redirect_uri: str
    state: str
    challenge: str
    resource: OAuthResource
    requested: tuple[Grant, ...]  # empty: the client asked for nothing in particular

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client.client_id,
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
            "resource": self.resource.uri,
            "scope": " ".join(f"{g.action}@{g.resource}" for g in self.requested),
            "response_type": "code",
        }


def on_server(grant: Grant, server: str) -> bool:
    return grant.action == TOOL_CALL and (grant.resource == server or grant.resource.startswith(server + "."))


def pick_resource(settings: OAuthSettings, value: str | None) -> OAuthResource:
    """The protected resource a request names (RFC 8707), or the only one configured."""
    if value:
        found = settings.resource(value)
        if found is None:
            raise OAuthError(
                "invalid_target", f"`{value[:200]}` is not a resource this server issues tokens for"
            )
        return found
    if len(settings.resources) == 1:
        return settings.resources[0]
    raise OAuthError("invalid_target", "name the protected resource with `resource` (RFC 8707)")


def requested_grants(value: str | None, resource: OAuthResource, catalog: Catalog) -> tuple[Grant, ...]:
    grants = tuple(Grant(a, r) for a, r in parse_scope(value))
    for g in grants:
        if not on_server(g, resource.server) or catalog.get(g.resource) is None:
            raise OAuthError("invalid_scope", f"`{g.action}@{g.resource}` is not a scope of `{resource.uri}`")
    return grants


def parse_authorize(
    params: Mapping[str, str], clients: Clients, settings: OAuthSettings, catalog: Catalog
) -> AuthzRequest:
    client = clients.get(params.get("client_id"))
    redirect = params.get("redirect_uri") or ""
    if not redirect and len(client.redirect_uris) == 1 and "://127.0.0.1" not in client.redirect_uris[0]:
        redirect = client.redirect_uris[0]
    if not client.redirect_allowed(redirect):
        raise OAuthError(
            "invalid_request",
            "`redirect_uri` does not exactly match one registered for this client",
            redirectable=False,
        )
    if params.get("response_type") != "code":
        raise OAuthError("unsupported_response_type", "only `response_type=code` is supported")
    challenge = pkce.check_challenge(params.get("code_challenge"), params.get("code_challenge_method"))
    state = params.get("state") or ""
    if len(state) > MAX_STATE:
        raise OAuthError("invalid_request", f"`state` is longer than {MAX_STATE} characters")
    resource = pick_resource(settings, params.get("resource"))
    requested = requested_grants(params.get("scope"), resource, catalog)
    return AuthzRequest(client, redirect, state, challenge, resource, requested)


def candidates(req: AuthzRequest, catalog: Catalog) -> tuple[Grant, ...]:
    """What the consent page may offer: what was asked for, else the server and its tools."""
    if req.requested:
        return req.requested
    server = req.resource.server
    tools = sorted(r.id for r in catalog.resources.values() if r.kind == "tool" and r.service == server)
    out = [Grant(TOOL_CALL, server)] if catalog.get(server) is not None else []
    return tuple(out + [Grant(TOOL_CALL, t) for t in tools])


def _provisional(workload: Workload, intent: str, ttl: int, delegator: Delegator | None, now: float) -> Task:
    return Task(
        id="tsk_consent",
        agent=workload.spiffe_id,
        delegator=delegator,
        intent=intent,
        description="",
        scope=(),
        created_at=now,
        expires_at=now + ttl,
        parent_id=None,
        root_id="tsk_consent",
        depth=0,
        state=TaskState.ACTIVE,
        attestation=workload.attestation,
        agent_attrs=dict(workload.attributes),
    )


def allowed_grants(
    broker: Broker,
    workload: Workload,
    intent: str,
    grants: Sequence[Grant],
    ttl: int,
    delegator: Delegator | None,
) -> tuple[Grant, ...]:
    """The grants policy would let ``workload`` open a task with for ``intent`` (a dry run:
    nothing is recorded; opening the task decides again and records it)."""
    if intent not in broker.catalog.intents:
        return ()
    now = broker.clock()
    facts = broker._task_facts(_provisional(workload, intent, ttl, delegator, now), now)
    principal = broker._principal(workload.spiffe_id, workload.attestation, workload.attributes)
    return tuple(
        g
        for g in grants
        if broker.catalog.get(g.resource) is not None
        and not broker._lifecycle_decisions(principal, actions.TASK_OPEN, (g,), facts, ttl, "")
    )


@dataclass(frozen=True, slots=True)
class CodeGrant:
    task_id: str
    client_id: str
    redirect_uri: str
    challenge: str
    resource: str
    expires_at: float


class Codes:
    """Authorization codes of this broker process (they live for ``oauth.code_ttl_seconds``).

    Kept in memory: a code is redeemed within seconds at the broker that issued it; behind
    a load balancer, route ``/oauth/*`` and ``/console/oauth/*`` to one replica at a time
    (docs/oauth.md).
    """

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self.ttl, self._clock = ttl, clock
        self._live: dict[str, CodeGrant] = {}
        self._spent: dict[str, CodeGrant] = {}  # redeemed, kept until expiry to spot replays
        self._lock = threading.Lock()

    def _sweep(self, now: float) -> None:
        for book in (self._live, self._spent):
            for k in [k for k, g in book.items() if g.expires_at <= now]:
                del book[k]

    def issue(self, grant: CodeGrant) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._sweep(self._clock())
            self._live[code] = replace(grant, expires_at=self._clock() + self.ttl)
        return code

    def redeem(
        self,
        code: str | None,
        *,
        client_id: str,
        redirect_uri: str,
        verifier: str | None,
        resource: str | None,
    ) -> CodeGrant:
        """The grant of a code, once. A replayed code raises with ``replayed`` set."""
        if not code or len(code) > 256:
            raise OAuthError("invalid_request", "`code` is required")
        now = self._clock()
        with self._lock:
            self._sweep(now)
            grant = self._live.pop(code, None)
            if grant is None:
                spent = self._spent.get(code)
                if spent is not None:
                    raise ReplayedCode(spent)
                raise OAuthError("invalid_grant", "the code is unknown, expired or already used")
            self._spent[code] = grant
        if not hmac.compare_digest(grant.client_id, client_id):
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if grant.redirect_uri != redirect_uri:
            raise OAuthError("invalid_grant", "`redirect_uri` differs from the authorization request's")
        if resource and resource != grant.resource:
            raise OAuthError("invalid_target", "`resource` differs from the authorization request's")
        pkce.verify(verifier, grant.challenge)
        return grant


class ReplayedCode(OAuthError):
    """A code presented a second time: whoever holds it, the task it opened is revoked."""

    def __init__(self, grant: CodeGrant) -> None:
        super().__init__("invalid_grant", "the code was already used; the task it opened is revoked")
        self.grant = grant


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    task_id: str
    client_id: str
    resource: str
    expires_at: float  # the task's expiry: a refresh token never outlives its task
    jkt: str | None = None  # RFC 9449 §5: a public client's refresh token is bound to its DPoP key


class RefreshTokens:
    """Refresh tokens, rotated on every use (OAuth 2.1 §4.3.1): each is good once, and a used
    one presented again means two parties hold the chain, so its task is revoked."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._live: dict[str, RefreshGrant] = {}
        self._spent: dict[str, RefreshGrant] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()  # the store never holds the token itself

    def issue(self, grant: RefreshGrant) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            for book in (self._live, self._spent):
                for k in [k for k, g in book.items() if g.expires_at <= now]:
                    del book[k]
            self._live[self._key(token)] = grant
        return token

    def find(self, token: str) -> RefreshGrant | None:
        """The live grant of a refresh token, without using it (for revocation)."""
        with self._lock:
            return self._live.get(self._key(token))

    def use(self, token: str | None, *, client_id: str, resource: str | None) -> RefreshGrant:
        if not token or len(token) > 256:
            raise OAuthError("invalid_request", "`refresh_token` is required")
        key, now = self._key(token), self._clock()
        with self._lock:
            grant = self._live.pop(key, None)
            if grant is None:
                spent = self._spent.get(key)
                if spent is not None:
                    raise ReplayedRefresh(spent)
                raise OAuthError("invalid_grant", "the refresh token is unknown, expired or already used")
            self._spent[key] = grant
        if grant.expires_at <= now:
            raise OAuthError("invalid_grant", "the refresh token expired with its task")
        if not hmac.compare_digest(grant.client_id, client_id):
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if resource and resource != grant.resource:
            raise OAuthError("invalid_target", "`resource` differs from the one this token was issued for")
        return grant


class ReplayedRefresh(OAuthError):
    """A rotated-away refresh token presented again: its task is revoked."""

    def __init__(self, grant: RefreshGrant) -> None:
        super().__init__("invalid_grant", "the refresh token was already used; its task is revoked")
        self.grant = grant

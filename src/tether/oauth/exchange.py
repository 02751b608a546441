"""RFC 8693 token exchange: a workload credential in, a task token out.

A programmatic agent presents what it already holds — a JWT-SVID or a token of a
configured OIDC issuer — as ``subject_token``, names the task it wants (Tether's
parameters ``intent``, ``scope`` as ``action@resource`` grants, ``ttl_seconds``) and gets a
task token: the same ``task:open`` policy decision, audit record and lifetime cap as
``POST /v1/tasks``, through any OAuth library.

* ``actor_token`` (RFC 8693 §1.1 delegation): the party acting for the subject, verified
  the same way; it becomes the task's ``act`` chain (§4.1), the subject stays the agent
  policy decides for.
* ``resource`` (RFC 8707) or ``audience`` naming a configured protected resource → the
  token is minted for that resource only; neither → for the broker, like any task token.
"""

from __future__ import annotations

from typing import Any, Protocol

from tether.audit import event as ev
from tether.broker import Broker, OpenTaskRequest
from tether.config import Settings
from tether.config_oauth import OAuthSettings
from tether.errors import Conflict, Forbidden, InvalidRequest, TetherError, Unauthenticated, Unavailable
from tether.model import Grant, Workload
from tether.oauth.errors import OAuthError
from tether.oauth.metadata import (
    ACCESS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    parse_scope,
)


class _Parts(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def broker(self) -> Broker: ...


class _Identity(Protocol):
    def authenticate(self, token: str) -> Workload: ...


class ExchangeHost(Protocol):
    """What an exchange needs of the authorization server (``tether.oauth.server.OAuthServer``)."""

    @property
    def rt(self) -> _Parts: ...
    @property
    def identity(self) -> _Identity: ...
    @property
    def settings(self) -> OAuthSettings: ...
    @property
    def max_lifetime(self) -> int: ...
    def audit(self, type_: str, what: str, **payload: Any) -> None: ...


SUBJECT_TYPES = frozenset({JWT_TOKEN_TYPE, ID_TOKEN_TYPE, ACCESS_TOKEN_TYPE})
ISSUED_TYPES = frozenset({ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE})


def _int(form: dict[str, str], name: str, default: int) -> int:
    raw = form.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 30 * 24 * 3600:
        raise OAuthError("invalid_request", f"`{name}` must be a number of seconds")
    return int(raw)


def exchange(server: ExchangeHost, form: dict[str, str]) -> dict[str, Any]:
    rt, identity = server.rt, server.identity
    limit = rt.settings.limits.max_token_bytes
    subject = form.get("subject_token")
    if not subject or len(subject) > limit:
        raise OAuthError("invalid_request", "`subject_token` is required")
    if form.get("subject_token_type") not in SUBJECT_TYPES:
        raise OAuthError("invalid_request", "`subject_token_type` must name a JWT (RFC 8693 §3)")
    if form.get("requested_token_type", ACCESS_TOKEN_TYPE) not in ISSUED_TYPES:
        raise OAuthError("invalid_request", "only access tokens (task tokens) can be issued")
    target = form.get("resource") or form.get("audience")
    resource = None
    if target and target != rt.settings.broker_audience:
        found = server.settings.resource(target)
        if found is None:
            raise OAuthError(
                "invalid_target", f"`{target[:200]}` is not a resource this server issues tokens for"
            )
        resource = found.uri
    grants = tuple(Grant(a, r) for a, r in parse_scope(form.get("scope")))
    if not grants:
        raise OAuthError("invalid_scope", "`scope` must name at least one grant (action@resource)")
    intent = form.get("intent")
    if not intent:
        raise OAuthError("invalid_request", "`intent` is required: one of the catalog's intents")
    ttl = min(_int(form, "ttl_seconds", server.max_lifetime), rt.settings.tasks.max_ttl_seconds)
    try:
        workload = identity.authenticate(subject)
    except Unauthenticated as exc:
        raise OAuthError("invalid_request", f"`subject_token` was refused: {exc.code}") from None
    act: tuple[str, ...] = ()
    actor_token = form.get("actor_token")
    if actor_token:
        if form.get("actor_token_type") not in SUBJECT_TYPES:
            raise OAuthError("invalid_request", "`actor_token_type` must name a JWT (RFC 8693 §3)")
        try:
            actor = identity.authenticate(actor_token[:limit])
        except Unauthenticated as exc:
            raise OAuthError("invalid_request", f"`actor_token` was refused: {exc.code}") from None
        act = (actor.spiffe_id,)
    elif form.get("actor_token_type"):
        raise OAuthError("invalid_request", "`actor_token_type` without `actor_token`")
    req = OpenTaskRequest(
        intent=intent[:64],
        description=(form.get("description") or "opened by token exchange")[:500],
        scope=grants,
        ttl_seconds=ttl,
        act_chain=act,
    )
    try:
        opened = rt.broker.open_task(workload, req)
    except Forbidden as exc:
        raise OAuthError("invalid_scope", f"policy does not allow this task ({exc.code})") from None
    except (InvalidRequest, Conflict) as exc:
        error = (
            "invalid_scope"
            if exc.code in ("invalid_scope", "unknown_resource", "unknown_action")
            else "invalid_request"
        )
        raise OAuthError(error, exc.message) from None
    except Unavailable as exc:
        raise OAuthError("temporarily_unavailable", exc.message) from None
    except TetherError as exc:
        raise OAuthError("invalid_request", exc.message) from None
    task = opened.task
    now = rt.broker.clock()
    token = rt.broker.tokens.mint(task, now=now, audience=resource) if resource else opened.token
    server.audit(
        ev.OAUTH_GRANTED, "exchange", task_id=task.id, agent=task.agent, resource=resource, act=list(act)
    )
    return {
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": max(1, int(task.expires_at - now)),
        "scope": " ".join(f"{g.action}@{g.resource}" for g in task.scope),
    }

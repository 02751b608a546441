"""The MCP gateway as an OAuth 2.1 protected resource (RFC 9728, RFC 8707, RFC 6750).

An ASGI layer in front of the Streamable HTTP app:

* ``GET /.well-known/oauth-protected-resource[<path>]`` → the resource's metadata, naming
  the broker as its authorization server.
* No bearer → ``401`` with ``WWW-Authenticate: Bearer resource_metadata="…", scope="…"``,
  which is what starts a stock MCP client's OAuth flow.
* A token the broker refuses for this resource — bad signature, expired, minted for another
  resource (the audience must be exactly this resource's URI), or its task closed →
  ``401`` ``error="invalid_token"``: the client signs in again.
* A good token whose task holds no grant on this gateway's server → ``403``
  ``error="insufficient_scope"`` naming the scope to ask for.

Only then does the request reach the MCP layer, where every ``tools/call`` is decided by
the broker as before (with this resource as the audience, so the same check holds there).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tether.errors import TetherError, Unauthenticated
from tether.gateway.authorizer import Authorizer
from tether.gateway.http import _send_json
from tether.oauth.metadata import prm_url, protected_resource_metadata, www_authenticate

log = logging.getLogger("tether.gateway.oauth")

__all__ = ["OAuthFrontDoor", "ProtectedResource"]


@dataclass(frozen=True, slots=True)
class ProtectedResource:
    """What a gateway says about itself as a protected resource."""

    resource: str  # its URI, exactly as clients use it and as tokens name it (``aud``)
    authorization_servers: tuple[str, ...]  # the broker's OAuth issuer
    server: str  # the catalog service behind it
    name: str = ""

    @property
    def scopes(self) -> tuple[str, ...]:
        return (f"tool:call@{self.server}",)

    @property
    def metadata_url(self) -> str:
        return prm_url(self.resource)

    def metadata(self) -> dict[str, Any]:
        return protected_resource_metadata(
            self.resource, self.authorization_servers, self.scopes, self.name or f"Tether MCP: {self.server}"
        )

    def covers(self, scope: Sequence[Mapping[str, Any]]) -> bool:
        """Does a task's scope hold any grant on this gateway's server or one of its tools?"""
        for g in scope:
            res = str(g.get("resource", ""))
            if g.get("action") == "tool:call" and (res == self.server or res.startswith(self.server + ".")):
                return True
        return False


def _bearer(scope: Mapping[str, Any]) -> str | None:
    header = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
    kind, _, token = header.decode("latin-1").partition(" ")
    if kind.lower() not in ("bearer", "dpop") or not token.strip():
        return None
    return token.strip()


class OAuthFrontDoor:
    def __init__(self, app: Any, resource: ProtectedResource, authorizer: Authorizer) -> None:
        self.app = app
        self.resource = resource
        self.authorizer = authorizer
        meta_path = resource.metadata_url.split("://", 1)[1]
        self._meta_paths = {"/.well-known/oauth-protected-resource", meta_path[meta_path.find("/") :]}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rs = self.resource
        if scope["path"] in self._meta_paths:
            if scope["method"] not in ("GET", "HEAD"):
                await _send_json(send, 405, {"code": "method_not_allowed", "message": "use GET"})
                return
            # Public metadata: any origin may read it (browser-based clients discover too).
            await _send_json(send, 200, rs.metadata(), {"access-control-allow-origin": "*"})
            return
        token = _bearer(scope)
        scope_hint = " ".join(rs.scopes)
        if token is None:
            await _send_json(
                send,
                401,
                {"code": "missing_token", "message": "send an access token: `Authorization: Bearer <token>`"},
                {"www-authenticate": www_authenticate(rs.metadata_url, scope=scope_hint)},
            )
            return
        try:
            task = await self.authorizer.check_token(token, rs.resource)
        except Unauthenticated as exc:
            header = www_authenticate(
                rs.metadata_url, error="invalid_token", description=str(exc.code), scope=scope_hint
            )
            await _send_json(send, 401, exc.to_dict(), {"www-authenticate": header})
            return
        except TetherError as exc:  # the broker is unreachable or refused the gateway: fail closed
            status = exc.status if 400 <= exc.status < 600 else 503
            await _send_json(send, status, exc.to_dict())
            return
        if not rs.covers(task.get("scope") or ()):
            header = www_authenticate(
                rs.metadata_url,
                error="insufficient_scope",
                description="the task holds no grant on this server",
                scope=scope_hint,
            )
            body = {"code": "insufficient_scope", "message": f"the task has no grant on `{rs.server}`"}
            await _send_json(send, 403, body, {"www-authenticate": header})
            return
        await self.app(scope, receive, send)

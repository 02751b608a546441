"""The OAuth layer of the runtime (``build``, called by ``Runtime.start`` after the console).

Adds the authorization server's routes to the broker's listener: metadata
(``/.well-known/oauth-authorization-server``), ``/oauth/token``, ``/oauth/revoke``, and the
consent page under ``/console/oauth`` (ahead of the console's own mount, whose session it
shares). Needs the console: consent is given by a signed-in human.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.routing import Mount, Route

from tether.errors import ConfigError
from tether.oauth.consent import ConsentViews
from tether.oauth.server import OAuthServer
from tether.server.app import guarded
from tether.server.console import PREFIX

if TYPE_CHECKING:
    from tether.identity.service import IdentityService
    from tether.runtime import Core
    from tether.server.console import Console


def build(rt: Core, identity: IdentityService, console: Console | None) -> OAuthServer | None:
    if not rt.settings.oauth.enabled:
        return None
    if console is None:
        raise ConfigError(
            "`oauth.enabled` needs the console (consent is given by a signed-in human); "
            "set `console.enabled = true`",
            code="config_invalid",
            field="oauth.enabled",
        )
    server = OAuthServer(rt, identity, console.base_url)
    views = ConsentViews(server, console)
    meta = "/.well-known/oauth-authorization-server"
    path = urlsplit(server.issuer).path.rstrip("/")
    routes: list[Route | Mount] = [
        Route(meta, guarded(server.metadata), methods=["GET"]),
        Route("/oauth/token", guarded(server.token), methods=["POST"]),
        Route("/oauth/revoke", guarded(server.revoke), methods=["POST"]),
    ]
    if path:  # RFC 8414 §3.1: the well-known segment goes before the issuer's path
        routes.append(Route(meta + path, guarded(server.metadata), methods=["GET"]))
    pages = Starlette(
        routes=[
            Route("/authorize", views.authorize, methods=["GET"]),
            Route("/consent", views.consent, methods=["POST"]),
        ]
    )
    at = next(
        (i for i, r in enumerate(rt.routes) if isinstance(r, Mount) and r.path == PREFIX), len(rt.routes)
    )
    rt.routes[at:at] = [Mount(PREFIX + "/oauth", app=pages)]
    rt.routes.extend(routes)
    rt.on_close.append(server.close)
    return server

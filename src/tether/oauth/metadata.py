"""The documents and headers of the OAuth front door, as pure functions.

* :func:`authorization_server_metadata` — RFC 8414 §2 (with RFC 9207 §3 and the Client ID
  Metadata Document flag), served at ``/.well-known/oauth-authorization-server``.
* :func:`protected_resource_metadata` — RFC 9728 §2, served by a gateway at
  ``/.well-known/oauth-protected-resource`` plus the resource's path (§3.1).
* :func:`www_authenticate` — RFC 6750 §3 with RFC 9728 §5.1 ``resource_metadata``.
* :func:`parse_scope` — OAuth scopes are Tether grants written ``action@resource``.
* :func:`client_document` — checks a fetched Client ID Metadata Document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tether.oauth.errors import OAuthError
from tether.oauth.uris import valid_cimd_url

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 (a URN)
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 (a URN)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 (a URN)
_SCOPE_TOKEN = re.compile(r"^([a-z]+:[a-z_]+)@([A-Za-z0-9][A-Za-z0-9_.\-]{0,127})$")
MAX_SCOPES = 50


def issuer_for(base_url: str) -> str:
    """The issuer identifier for a base URL: a root URL ends in ``/``, so that clients that
    normalize URLs (and compare RFC 9207 ``iss`` as a plain string) see the same text."""
    parts = urlsplit(base_url)
    return base_url if parts.path else base_url + "/"


def endpoint(issuer: str, path: str) -> str:
    return issuer.rstrip("/") + path


def authorization_server_metadata(issuer: str, *, cimd: bool, scopes: Sequence[str]) -> dict[str, Any]:
    return {
        "issuer": issuer,
        # Inside the console: its sign-in and session cookie protect the consent page.
        "authorization_endpoint": endpoint(issuer, "/console/oauth/authorize"),
        "token_endpoint": endpoint(issuer, "/oauth/token"),
        "revocation_endpoint": endpoint(issuer, "/oauth/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", TOKEN_EXCHANGE],
        "code_challenge_methods_supported": ["S256"],
        # Public clients (PKCE) only: an MCP client on a laptop cannot keep a secret.
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": list(scopes),
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": cimd,
        "dpop_signing_alg_values_supported": ["ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256"],
    }


def prm_url(resource: str) -> str:
    """Where a resource's metadata lives: the well-known prefix inserted before its path."""
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{path}"


def protected_resource_metadata(
    resource: str, authorization_servers: Sequence[str], scopes: Sequence[str], name: str = ""
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        "scopes_supported": list(scopes),
        "bearer_methods_supported": ["header"],
    }
    if name:
        doc["resource_name"] = name
    return doc


def _quoted(value: str) -> str:
    cleaned = "".join(c for c in value if c.isprintable())[:300]
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(
    resource_metadata: str, *, error: str | None = None, description: str | None = None, scope: str = ""
) -> str:
    params: list[tuple[str, str]] = []
    if error:
        params.append(("error", error))
    if description:
        params.append(("error_description", description))
    if scope:
        params.append(("scope", scope))
    params.append(("resource_metadata", resource_metadata))
    return "Bearer " + ", ".join(f"{k}={_quoted(v)}" for k, v in params)


def parse_scope(value: str | None) -> tuple[tuple[str, str], ...]:
    """``"tool:call@fs tool:call@fs.read"`` → grants; anything else is ``invalid_scope``."""
    if not value:
        return ()
    out: list[tuple[str, str]] = []
    for token in value.split(" "):
        if not token:
            continue
        m = _SCOPE_TOKEN.match(token)
        if m is None:
            raise OAuthError(
                "invalid_scope", f"`{token[:80]}` is not a scope; write grants as action@resource"
            )
        if (m.group(1), m.group(2)) not in out:
            out.append((m.group(1), m.group(2)))
    if len(out) > MAX_SCOPES:
        raise OAuthError("invalid_scope", f"at most {MAX_SCOPES} scopes")
    return tuple(out)


def scope_text(grants: Sequence[tuple[str, str]]) -> str:
    return " ".join(f"{a}@{r}" for a, r in grants)


def client_document(doc: Any, url: str) -> tuple[str, tuple[str, ...]]:
    """A Client ID Metadata Document's (name, redirect URIs), or ``invalid_client``.

    The document must name itself (``client_id`` equal to the URL it came from), list its
    redirect URIs, and be a public client: a document cannot hold a shared secret.
    """

    def bad(why: str) -> OAuthError:
        return OAuthError("invalid_client", f"the client metadata document at `{url[:200]}` {why}")

    if not valid_cimd_url(url):
        raise bad("is not an https URL with a path")
    if not isinstance(doc, Mapping):
        raise bad("is not a JSON object")
    if doc.get("client_id") != url:
        raise bad("names another `client_id`")
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) and u for u in uris):
        raise bad("has no `redirect_uris` list")
    if len(uris) > 20:
        raise bad("lists more than 20 redirect URIs")
    for u in uris:
        parts = urlsplit(u)
        if not parts.scheme or parts.fragment:
            raise bad(f"has a redirect URI that is not absolute: `{u[:100]}`")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
            raise bad("may use http redirect URIs only on loopback")
    method = doc.get("token_endpoint_auth_method", "none")
    if method != "none" or "client_secret" in doc:
        raise bad("must describe a public client (`token_endpoint_auth_method` = `none`, no secret)")
    name = doc.get("client_name")
    return (name[:100] if isinstance(name, str) and name.strip() else urlsplit(url).netloc), tuple(uris)

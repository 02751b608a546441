"""``[oauth]`` settings: the broker as an OAuth 2.1 authorization server (docs/oauth.md).

Kept apart from ``config.py`` like ``config_console.py``; ``Settings.oauth`` holds one of
these, built by the same loader. Lists of tables (``[[oauth.clients]]``,
``[[oauth.resources]]``) are validated here, each error naming its field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tether.errors import ConfigError

#: Grant lifetimes a human can pick on the consent page are capped by this (and by
#: ``tasks.max_ttl_seconds``).
DEFAULT_MAX_LIFETIME = 3600


def _bad(name: str, why: str) -> ConfigError:
    return ConfigError(f"`{name}` {why}", code="config_invalid", field=name)


def _https_or_loopback(value: str, name: str) -> None:
    parts = urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme not in ("https", "http") or not parts.netloc or (parts.scheme == "http" and not loopback):
        raise _bad(name, f"must be an https URL (http only on loopback), got `{value}`")
    if parts.fragment or parts.query:
        raise _bad(name, "must have no query or fragment")


def _strs(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "must be a list of strings")
    return tuple(value)


def _table(raw: Any, name: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _bad(name, "must be a table")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise _bad(f"{name}.{unknown[0]}", "is not a setting")
    return raw


@dataclass(frozen=True, slots=True)
class OAuthClientConfig:
    """One pre-registered client (``[[oauth.clients]]``): a public client using PKCE."""

    #: The client's id (not an https URL: those are Client ID Metadata Documents).
    client_id: str
    #: Shown on the consent page.
    name: str
    #: Matched exactly; a loopback IP literal (http://127.0.0.1/...) matches on any port.
    redirect_uris: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OAuthResource:
    """One protected resource (``[[oauth.resources]]``): an MCP gateway in front of ``server``."""

    #: The resource indicator clients send (RFC 8707), e.g. https://mcp.example/mcp.
    uri: str
    #: The catalog service behind it: grants are `tool:call` on it and its tools.
    server: str


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """``[oauth]``: authorization code + PKCE for MCP clients, token exchange for agents."""

    #: Serve the authorization server (needs the console: consent is given by a signed-in human).
    enabled: bool = False
    #: The issuer identifier (RFC 8414); empty: the console's public URL with a ``/``.
    issuer: str = ""
    #: Longest task lifetime a consent can grant (also capped by ``tasks.max_ttl_seconds``).
    max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME
    #: How long an authorization code may wait to be redeemed (it is good once).
    code_ttl_seconds: int = 60
    #: Access tokens from a consent live this long (at most the task); refresh tokens,
    #: rotated on each use, carry the client to the task's end.
    access_token_ttl_seconds: int = 900
    #: Client ID Metadata Documents: https ``client_id`` URLs whose JSON document is fetched.
    client_metadata_documents: bool = True
    #: The largest metadata document read, and the wall time a fetch may take in total.
    cimd_max_bytes: int = 5120
    cimd_timeout_seconds: float = 3.0
    #: Test rigs only: let CIMD fetches reach loopback and private addresses.
    cimd_allow_private: bool = False
    #: A PEM CA bundle for CIMD fetches (test rigs with their own CA); empty: the system's.
    cimd_ca_file: str = ""
    #: Pre-registered clients (``[[oauth.clients]]``).
    clients: tuple[OAuthClientConfig, ...] = ()
    #: Protected resources tokens are issued for (``[[oauth.resources]]``).
    resources: tuple[OAuthResource, ...] = ()

    def __post_init__(self) -> None:
        enabled: Any = self.enabled
        if isinstance(enabled, str) and enabled.lower() in ("true", "1", "yes", "false", "0", "no"):
            enabled = enabled.lower() in ("true", "1", "yes")  # from the environment
        if not isinstance(enabled, bool):
            raise _bad("oauth.enabled", "must be true or false")
        object.__setattr__(self, "enabled", enabled)
        if self.issuer:
            _https_or_loopback(self.issuer, "oauth.issuer")
        for name, lo, hi in (
            ("max_lifetime_seconds", 60, 30 * 24 * 3600),
            ("code_ttl_seconds", 10, 600),
            ("access_token_ttl_seconds", 30, 24 * 3600),
            ("cimd_max_bytes", 256, 65536),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise _bad(f"oauth.{name}", f"must be an integer between {lo} and {hi}")
        if not 0.1 <= float(self.cimd_timeout_seconds) <= 30:
            raise _bad("oauth.cimd_timeout_seconds", "must be between 0.1 and 30")
        object.__setattr__(self, "clients", self._clients())
        object.__setattr__(self, "resources", self._resources())

    def _clients(self) -> tuple[OAuthClientConfig, ...]:
        value: Any = self.clients
        if not isinstance(value, list | tuple):
            raise _bad("oauth.clients", "must be a list of tables ([[oauth.clients]])")
        out: list[OAuthClientConfig] = []
        for i, raw in enumerate(value):
            where = f"oauth.clients[{i}]"
            if isinstance(raw, OAuthClientConfig):
                raw = {"client_id": raw.client_id, "name": raw.name, "redirect_uris": list(raw.redirect_uris)}
            t = _table(raw, where, ("client_id", "name", "redirect_uris"))
            cid = t.get("client_id")
            if not isinstance(cid, str) or not 1 <= len(cid) <= 200 or cid.startswith("https://"):
                raise _bad(f"{where}.client_id", "must be 1-200 characters and not an https URL")
            uris = _strs(t.get("redirect_uris", ()), f"{where}.redirect_uris")
            if not uris:
                raise _bad(f"{where}.redirect_uris", "must list at least one redirect URI")
            for j, uri in enumerate(uris):
                parts = urlsplit(uri)
                if not parts.scheme or parts.fragment:
                    raise _bad(f"{where}.redirect_uris[{j}]", "must be an absolute URI without a fragment")
                if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
                    raise _bad(f"{where}.redirect_uris[{j}]", "may use http only on loopback (RFC 8252)")
            if any(c.client_id == cid for c in out):
                raise _bad(f"{where}.client_id", f"`{cid}` is listed twice")
            out.append(OAuthClientConfig(cid, str(t.get("name") or cid)[:100], uris))
        return tuple(out)

    def _resources(self) -> tuple[OAuthResource, ...]:
        value: Any = self.resources
        if not isinstance(value, list | tuple):
            raise _bad("oauth.resources", "must be a list of tables ([[oauth.resources]])")
        out: list[OAuthResource] = []
        for i, raw in enumerate(value):
            where = f"oauth.resources[{i}]"
            if isinstance(raw, OAuthResource):
                raw = {"uri": raw.uri, "server": raw.server}
            t = _table(raw, where, ("uri", "server"))
            uri, server = t.get("uri"), t.get("server")
            if not isinstance(uri, str):
                raise _bad(f"{where}.uri", "is required")
            _https_or_loopback(uri, f"{where}.uri")
            if not isinstance(server, str) or not server:
                raise _bad(f"{where}.server", "must name the catalog service behind the resource")
            if any(r.uri == uri for r in out):
                raise _bad(f"{where}.uri", f"`{uri}` is listed twice")
            out.append(OAuthResource(uri, server))
        if self.enabled and not out:
            raise _bad("oauth.resources", "must list at least one protected resource when OAuth is enabled")
        return tuple(out)

    def resource(self, uri: str) -> OAuthResource | None:
        return next((r for r in self.resources if r.uri == uri), None)

    def client(self, client_id: str) -> OAuthClientConfig | None:
        return next((c for c in self.clients if c.client_id == client_id), None)

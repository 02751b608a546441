"""``[console]`` settings: the operator console, its OIDC sign-in and the approval notifier.

Kept apart from ``config.py`` so that file stays readable; ``Settings.console`` holds
one of these, built and validated by the same loader (errors name the field).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tether.errors import ConfigError

#: Roles in increasing power; each includes the ones before it.
ROLES = ("viewer", "approver", "admin")


def _bad(name: str, why: str) -> ConfigError:
    return ConfigError(f"`{name}` {why}", code="config_invalid", field=name)


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise _bad(name, "must be true or false")


def _url(value: str, name: str) -> None:
    parts = urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme not in ("https", "http") or not parts.netloc or (parts.scheme == "http" and not loopback):
        raise _bad(name, f"must be an https URL (http only on loopback), got `{value}`")


def _strs(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "must be a list of strings")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class ConsoleOidc:
    """``[console.oidc]``: the operators' OIDC issuer (authorization code + PKCE)."""

    issuer: str = ""  # empty: no OIDC sign-in, only `tether console` login links
    client_id: str = ""
    client_secret: str = field(default="", repr=False)  # empty: a public client (PKCE only)
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    #: The claim whose value(s) are matched against ``[console.roles]``.
    role_claim: str = "groups"
    #: The claim shown as the human's name next to the subject (audit names both).
    name_claim: str = "email"

    def __post_init__(self) -> None:
        for n in ("scopes", "algorithms"):
            object.__setattr__(self, n, _strs(getattr(self, n), f"console.oidc.{n}"))
        if self.issuer:
            _url(self.issuer, "console.oidc.issuer")
            if not self.client_id:
                raise _bad("console.oidc.client_id", "is required when `console.oidc.issuer` is set")
            if "openid" not in self.scopes:
                raise _bad("console.oidc.scopes", "must include `openid`")


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """``[console.notify]``: where pending approvals are announced (never a one-click approve)."""

    webhook_url: str = ""  # generic JSON webhook, signed with `X-Tether-Signature`
    webhook_secret: str = field(default="", repr=False)  # HMAC-SHA256 key; required with webhook_url
    slack_url: str = ""  # Slack-compatible incoming webhook
    max_attempts: int = 5
    backoff_seconds: float = 1.0  # doubled after each failed attempt

    def __post_init__(self) -> None:
        for n in ("webhook_url", "slack_url"):
            if getattr(self, n):
                _url(getattr(self, n), f"console.notify.{n}")
        if self.webhook_url and len(self.webhook_secret) < 16:
            raise _bad("console.notify.webhook_secret", "must be at least 16 characters with `webhook_url`")
        if not 1 <= int(self.max_attempts) <= 20:
            raise _bad("console.notify.max_attempts", "must be between 1 and 20")
        try:
            backoff = float(self.backoff_seconds)
        except (TypeError, ValueError):
            raise _bad("console.notify.backoff_seconds", "must be a number") from None
        if not 0 < backoff <= 300:
            raise _bad("console.notify.backoff_seconds", "must be between 0 and 300")
        object.__setattr__(self, "max_attempts", int(self.max_attempts))
        object.__setattr__(self, "backoff_seconds", backoff)


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """``[console]``: served by the broker under ``/console`` (see docs/console.md)."""

    enabled: bool = True
    #: The URL operators reach the console at (links in notifications, OIDC redirect URI);
    #: empty: ``http://<listen>``.
    public_url: str = ""
    session_ttl_seconds: int = 8 * 3600
    #: Role → claim values (of ``console.oidc.role_claim``) that grant it.
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    oidc: ConsoleOidc = field(default_factory=ConsoleOidc)
    notify: NotifySettings = field(default_factory=NotifySettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "enabled", _bool(self.enabled, "console.enabled"))
        if self.public_url:
            _url(self.public_url, "console.public_url")
        if not 60 <= int(self.session_ttl_seconds) <= 7 * 24 * 3600:
            raise _bad("console.session_ttl_seconds", "must be between 60 and 604800")
        if not isinstance(self.roles, Mapping):
            raise _bad("console.roles", "must be a table of role = [claim values]")
        roles: dict[str, tuple[str, ...]] = {}
        for role, values in self.roles.items():
            if role not in ROLES:
                raise _bad(f"console.roles.{role}", f"is not a role; use one of {', '.join(ROLES)}")
            roles[role] = _strs(values, f"console.roles.{role}")
        object.__setattr__(self, "roles", roles)
        if self.oidc.issuer and not roles:
            raise _bad("console.roles", "must map at least one role when OIDC sign-in is configured")

"""Typed settings, read once from ``<state>/tether.toml`` and ``TETHER_*`` variables.

Precedence: built-in defaults < ``tether.toml`` < environment. Nested keys use a double
underscore in the environment: ``TETHER_TASKS__MAX_TTL_SECONDS=600``. Every error names
the field (``tasks.max_ttl_seconds``) and what is wrong with it; an invalid config stops
the process before it listens.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from tether.errors import ConfigError

CONFIG_FILE = "tether.toml"


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """Keys that sign JWT-SVIDs for one trust domain (SPIRE, another broker, tests)."""

    trust_domain: str
    jwks_file: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None  # when set, the exact `iss` required; SPIRE omits `iss` by default


@dataclass(frozen=True, slots=True)
class TaskLimits:
    max_ttl_seconds: int = 3600
    max_depth: int = 3
    delegation_ttl_seconds: int = 300


@dataclass(frozen=True, slots=True)
class CredentialSettings:
    default_ttl_seconds: int = 300
    #: Service id → the broker's admin connection string for that service's PostgreSQL
    #: (the ``postgres`` connector). Never returned to anyone; kept out of ``repr``.
    postgres: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Failed revocations are retried with backoff this many times, then irrevocable.
    revoke_max_attempts: int = 8
    #: A lease left ``pending`` this long by another replica is presumed crashed and reaped.
    pending_timeout_seconds: int = 60


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    ttl_seconds: int = 900


@dataclass(frozen=True, slots=True)
class KeySettings:
    rotate_after_seconds: int = 7 * 24 * 3600
    overlap_seconds: int = 24 * 3600  # retired keys still verify for this long


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_token_bytes: int = 16 * 1024
    jwt_leeway_seconds: int = 30


def _str_tuple(value: Any, name: str) -> tuple[str, ...]:
    """A TOML list, or a JSON list from an environment variable, as a tuple of strings."""
    if isinstance(value, str):
        import json  # local: only the environment spells lists as text

        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"`{name}` must be a list of strings (JSON in the environment)",
                              code="config_invalid", field=name) from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"`{name}` must be a list of strings", code="config_invalid", field=name)
    return tuple(value)


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """``[audit]``: checkpoints and masking (see docs/audit.md)."""

    checkpoint_every_events: int = 1000
    checkpoint_interval_seconds: int = 60
    checkpoint_file: str = ""  # JSON Lines of signed checkpoints, kept outside the database
    checkpoint_url: str = ""  # each checkpoint is POSTed here as JSON
    mask_paths: tuple[str, ...] = ()  # dotted JSON paths, `*` for any key or index
    mask_headers: tuple[str, ...] = ()  # header names, masked under any `headers` object
    mask_patterns: tuple[str, ...] = ()  # regexes; matching text inside any string is masked

    def __post_init__(self) -> None:
        import re  # local: keeps config import-light

        for name in ("mask_paths", "mask_headers", "mask_patterns"):
            object.__setattr__(self, name, _str_tuple(getattr(self, name), f"audit.{name}"))
        for i, pattern in enumerate(self.mask_patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"`audit.mask_patterns[{i}]` is not a valid regex: {exc}",
                                  code="config_invalid", field=f"audit.mask_patterns[{i}]") from None
        for i, path in enumerate(self.mask_paths):
            if not path.strip("$.") or ".." in path.lstrip("$"):
                raise ConfigError(f"`audit.mask_paths[{i}]` must be a dotted path like "
                                  "`request.headers.x-key`", code="config_invalid", field=f"audit.mask_paths[{i}]")
        for name in ("checkpoint_every_events", "checkpoint_interval_seconds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`audit.{name}` must be at least 1", code="config_invalid",
                                  field=f"audit.{name}")
        if self.checkpoint_url and not self.checkpoint_url.startswith(("https://", "http://")):
            raise ConfigError("`audit.checkpoint_url` must be an http(s) URL", code="config_invalid",
                              field="audit.checkpoint_url")


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path
    listen: str = "127.0.0.1:8421"
    store: str = ""  # empty → sqlite in the state directory
    environment: str = "dev"
    trust_domain: str = "tether.local"
    node_id: str = "node-1"  # names this writer's audit chain; unique per replica
    audience: str = ""  # empty → spiffe://<trust_domain>/tether
    issuer: str = ""  # empty → the audience
    policy_dir: str = "policies"
    catalog_file: str = "catalog.yaml"
    trust_bundles: tuple[TrustBundle, ...] = ()
    tasks: TaskLimits = field(default_factory=TaskLimits)
    credentials: CredentialSettings = field(default_factory=CredentialSettings)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    keys: KeySettings = field(default_factory=KeySettings)
    limits: Limits = field(default_factory=Limits)
    audit: AuditSettings = field(default_factory=AuditSettings)

    # Derived values: everything that has a computed default is read through these.
    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.state_dir / 'tether.db'}"

    @property
    def broker_audience(self) -> str:
        return self.audience or f"spiffe://{self.trust_domain}/tether"

    @property
    def broker_issuer(self) -> str:
        return self.issuer or self.broker_audience

    @property
    def policy_path(self) -> Path:
        return self._resolve(self.policy_dir)

    @property
    def catalog_path(self) -> Path:
        return self._resolve(self.catalog_file)

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "admin.sock"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def _resolve(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.state_dir / p


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Turn a TOML or environment value into ``typ``, or say which field is wrong."""
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"`{name}` must be an integer", code="config_invalid", field=name)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"`{name}` must be an integer, got `{value}`",
                              code="config_invalid", field=name) from None
    if typ is str or typ == str | None:
        if value is None and typ != str:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"`{name}` must be a string", code="config_invalid", field=name)
        return value
    if typ is Path:
        return Path(value)
    return value


def _build(cls: Any, raw: Mapping[str, Any], prefix: str, **fixed: Any) -> Any:
    """Build dataclass ``cls`` from ``raw``; ``fixed`` fields never come from the file."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"`{prefix.rstrip('.') or 'config'}` must be a table", code="config_invalid")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)} - set(fixed)
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown setting `{prefix}{key}`", code="config_invalid",
                              field=f"{prefix}{key}")
    kwargs: dict[str, Any] = dict(fixed)
    for f in fields(cls):
        if f.name not in raw or f.name in fixed:
            continue
        typ = hints[f.name]
        value = raw[f.name]
        name = f"{prefix}{f.name}"
        if is_dataclass(typ):
            kwargs[f.name] = _build(typ, value, name + ".")
        elif f.name == "trust_bundles":
            if not isinstance(value, list):
                raise ConfigError(f"`{name}` must be a list of tables", code="config_invalid")
            kwargs[f.name] = tuple(_build(TrustBundle, v, f"{name}[{i}].") for i, v in enumerate(value))
        else:
            kwargs[f.name] = _coerce(value, typ, name)
    return cls(**kwargs)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("TETHER_") or key in ("TETHER_STATE_DIR", "TETHER_MASTER_KEY"):
            continue
        path = key[len("TETHER_"):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = _merge(dict(merged[k]), v)
        else:
            merged[k] = v
    return merged


def validate(s: Settings) -> Settings:
    def bad(fieldname: str, why: str) -> ConfigError:
        return ConfigError(f"`{fieldname}` {why}", code="config_invalid", field=fieldname)

    try:
        host, port = s.listen_host_port
    except ValueError:
        raise bad("listen", "must be HOST:PORT") from None
    if not host or not 0 <= port <= 65535:
        raise bad("listen", "must be HOST:PORT")
    from tether.identity.spiffe_id import valid_trust_domain  # local: identity imports config types

    if not valid_trust_domain(s.trust_domain):
        raise bad("trust_domain", f"is not a valid SPIFFE trust domain: `{s.trust_domain}`")
    if s.environment == "" or not s.environment.replace("-", "").replace("_", "").isalnum():
        raise bad("environment", "must be a short name such as `dev` or `prod`")
    if not s.node_id or len(s.node_id) > 64:
        raise bad("node_id", "must be 1-64 characters")
    if not (s.store_url.startswith("sqlite") or s.store_url.startswith("postgresql")):
        raise bad("store", "must be a sqlite:/// or postgresql:// URL")
    for name, value, lo in (
        ("tasks.max_ttl_seconds", s.tasks.max_ttl_seconds, 1),
        ("tasks.max_depth", s.tasks.max_depth, 0),
        ("tasks.delegation_ttl_seconds", s.tasks.delegation_ttl_seconds, 1),
        ("credentials.default_ttl_seconds", s.credentials.default_ttl_seconds, 1),
        ("credentials.revoke_max_attempts", s.credentials.revoke_max_attempts, 1),
        ("credentials.pending_timeout_seconds", s.credentials.pending_timeout_seconds, 1),
        ("approvals.ttl_seconds", s.approvals.ttl_seconds, 1),
        ("limits.max_body_bytes", s.limits.max_body_bytes, 1024),
        ("limits.jwt_leeway_seconds", s.limits.jwt_leeway_seconds, 0),
    ):
        if value < lo:
            raise bad(name, f"must be at least {lo}")
    if s.limits.jwt_leeway_seconds > 300:
        raise bad("limits.jwt_leeway_seconds", "must be at most 300 (a small leeway)")
    if not isinstance(s.credentials.postgres, Mapping):
        raise bad("credentials.postgres", "must be a table of service id = admin connection string")
    for service, dsn in s.credentials.postgres.items():
        if not isinstance(dsn, str) or not dsn.strip():
            raise bad(f"credentials.postgres.{service}", "must be a PostgreSQL connection string")
    seen: set[str] = set()
    for i, tb in enumerate(s.trust_bundles):
        where = f"trust_bundles[{i}]"
        if not valid_trust_domain(tb.trust_domain):
            raise bad(f"{where}.trust_domain", f"is not a valid trust domain: `{tb.trust_domain}`")
        if (tb.jwks_file is None) == (tb.jwks_url is None):
            raise bad(where, "needs exactly one of `jwks_file` or `jwks_url`")
        if tb.trust_domain in seen:
            raise bad(f"{where}.trust_domain", f"`{tb.trust_domain}` is listed twice")
        seen.add(tb.trust_domain)
    return s


def load_settings(state_dir: Path | str | None = None, *, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read and validate settings once. ``overrides`` (from CLI flags) win over everything."""
    env = os.environ if environ is None else environ
    state = Path(state_dir or env.get("TETHER_STATE_DIR") or ".tether").absolute()
    raw: dict[str, Any] = {}
    cfg = state / CONFIG_FILE
    if cfg.exists():
        try:
            raw = tomllib.loads(cfg.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg}: {exc}", code="config_invalid") from exc
    raw = _merge(raw, _env_overrides(env))
    if overrides:
        raw = _merge(raw, {k: v for k, v in overrides.items() if v is not None})
    return validate(_build(Settings, raw, "", state_dir=state))

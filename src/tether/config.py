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

from tether.config_console import ConsoleSettings
from tether.config_oauth import OAuthSettings
from tether.config_ops import MetricsSettings, TlsSettings, TracingSettings
from tether.errors import ConfigError

CONFIG_FILE = "tether.toml"


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """Keys that sign JWT-SVIDs for one trust domain (SPIRE, another broker, tests)."""

    #: The SPIFFE trust domain whose JWT-SVIDs these keys sign (e.g. ``prod.example.org``).
    trust_domain: str
    #: A JWKS file (relative to the state directory), or ``jwks_url``: exactly one of the two.
    jwks_file: str | None = None
    #: A SPIFFE bundle endpoint or JWKS URL, refreshed in the background.
    jwks_url: str | None = None
    issuer: str | None = None  # when set, the exact `iss` required; SPIRE omits `iss` by default


@dataclass(frozen=True, slots=True)
class TaskLimits:
    #: The longest lifetime a task may ask for; longer requests are capped to it.
    max_ttl_seconds: int = 3600
    #: How many delegation hops below a root task are allowed (0: no delegation).
    max_depth: int = 3
    #: How long a delegation offer stays redeemable by the sub-agent it names.
    delegation_ttl_seconds: int = 300


@dataclass(frozen=True, slots=True)
class CredentialSettings:
    #: Lifetime of a minted credential (never beyond its task's expiry).
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
    #: How long a pending approval waits for a human, and how long a granted one stays usable.
    ttl_seconds: int = 900


@dataclass(frozen=True, slots=True)
class KeySettings:
    #: A signing key signs for this long; the next one is published in its last tenth.
    rotate_after_seconds: int = 7 * 24 * 3600
    overlap_seconds: int = 24 * 3600  # retired keys still verify for this long


@dataclass(frozen=True, slots=True)
class Limits:
    #: Request bodies above this are refused (413 ``payload_too_large``).
    max_body_bytes: int = 1024 * 1024
    #: Request headers above this are refused (431 ``headers_too_large``).
    max_header_bytes: int = 16 * 1024
    #: Larger tokens (SVIDs, task tokens, DPoP proofs) are refused before parsing.
    max_token_bytes: int = 16 * 1024
    #: Clock skew allowed on ``exp``/``nbf``/``iat`` of every JWT (at most 300).
    jwt_leeway_seconds: int = 30
    #: Long-polls and event streams one caller (SPIFFE ID) may hold open at once.
    max_waits_per_caller: int = 8
    #: Budget of one request's store work: connect, lock and statement timeouts (ms).
    store_timeout_ms: int = 2000
    #: Slow clients: a request's headers, then its body, must arrive within these.
    header_timeout_seconds: int = 5
    body_timeout_seconds: int = 30  # see `limits.header_timeout_seconds`
    #: An idle keep-alive connection is closed after this long.
    keepalive_seconds: int = 5
    #: Open connections one server accepts; beyond, new ones get a 503.
    max_connections: int = 512


def _str_tuple(value: Any, name: str) -> tuple[str, ...]:
    """A TOML list, or a JSON list from an environment variable, as a tuple of strings."""
    if isinstance(value, str):
        import json  # local: only the environment spells lists as text

        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(
                f"`{name}` must be a list of strings (JSON in the environment)",
                code="config_invalid",
                field=name,
            ) from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"`{name}` must be a list of strings", code="config_invalid", field=name)
    return tuple(value)


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """``[audit]``: checkpoints and masking (see docs/audit.md)."""

    #: Sign a checkpoint of this writer's chain after this many events ...
    checkpoint_every_events: int = 1000
    #: ... or after this many seconds, whichever comes first (and at shutdown).
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
                raise ConfigError(
                    f"`audit.mask_patterns[{i}]` is not a valid regex: {exc}",
                    code="config_invalid",
                    field=f"audit.mask_patterns[{i}]",
                ) from None
        for i, path in enumerate(self.mask_paths):
            if not path.strip("$.") or ".." in path.lstrip("$"):
                raise ConfigError(
                    f"`audit.mask_paths[{i}]` must be a dotted path like `request.headers.x-key`",
                    code="config_invalid",
                    field=f"audit.mask_paths[{i}]",
                )
        for name in ("checkpoint_every_events", "checkpoint_interval_seconds"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"`audit.{name}` must be at least 1", code="config_invalid", field=f"audit.{name}"
                )
        if self.checkpoint_url and not self.checkpoint_url.startswith(("https://", "http://")):
            raise ConfigError(
                "`audit.checkpoint_url` must be an http(s) URL",
                code="config_invalid",
                field="audit.checkpoint_url",
            )


def _identity_error(name: str, why: str) -> ConfigError:
    return ConfigError(f"`{name}` {why}", code="config_invalid", field=name)


def _identity_strs(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):  # the environment spells a list as a comma-separated string
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise _identity_error(name, "must be a list of non-empty strings")
    return tuple(value)


def _identity_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
    ):
        raise _identity_error(name, "must be a table of strings")
    return dict(value)


def _issuer_url(value: str, name: str) -> None:
    from urllib.parse import urlsplit  # local: keeps config import-light

    parts = urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if (
        not (parts.scheme == "https" or (parts.scheme == "http" and loopback))
        or not parts.hostname
        or parts.query
        or parts.fragment
    ):
        raise _identity_error(name, f"must be an https URL without query or fragment, got `{value}`")


@dataclass(frozen=True, slots=True)
class OidcIssuer:
    """``[[identity.oidc_issuers]]``: workloads proven by an OIDC token (CI jobs, Kubernetes).

    ``spiffe_id`` is a template over the token's claims: ``{claim}`` takes one path segment,
    ``{claim:path}`` (at most one per template) may span several; ``{trust_domain}`` is the
    broker's. ``subjects`` are shell-style patterns the ``sub`` must match (required: an
    issuer such as a public CI serves everyone's jobs).
    """

    issuer: str = ""
    spiffe_id: str = ""
    subjects: tuple[str, ...] = ()
    audience: str = ""  # empty: the broker audience
    required_claims: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)  # attribute name = claim name
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwks_url: str = ""  # empty: from the discovery document

    def __post_init__(self) -> None:
        where = "identity.oidc_issuers[].{}"
        for name in ("subjects", "algorithms"):
            object.__setattr__(self, name, _identity_strs(getattr(self, name), where.format(name)))
        for name in ("required_claims", "attributes"):
            object.__setattr__(self, name, _identity_map(getattr(self, name), where.format(name)))
        _issuer_url(self.issuer, where.format("issuer"))
        if self.jwks_url:
            _issuer_url(self.jwks_url, where.format("jwks_url"))
        if not self.subjects:
            raise _identity_error(where.format("subjects"), "must list the allowed `sub` patterns")
        if not self.spiffe_id:
            raise _identity_error(where.format("spiffe_id"), "is required (a SPIFFE ID template)")


@dataclass(frozen=True, slots=True)
class DelegatorIssuer:
    """``[[identity.delegator_issuers]]``: whose OIDC ID tokens may name a task's human delegator."""

    issuer: str = ""
    audience: str = ""  # the OIDC client id the ID tokens are issued to
    subjects: tuple[str, ...] = ("*",)
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwks_url: str = ""

    def __post_init__(self) -> None:
        where = "identity.delegator_issuers[].{}"
        for name in ("subjects", "algorithms"):
            object.__setattr__(self, name, _identity_strs(getattr(self, name), where.format(name)))
        _issuer_url(self.issuer, where.format("issuer"))
        if self.jwks_url:
            _issuer_url(self.jwks_url, where.format("jwks_url"))
        if not self.audience:
            raise _identity_error(where.format("audience"), "is required (the OIDC client id)")


DPOP_MODES = ("required", "optional", "auto")


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """``[identity]``: the local Workload API, SVIDs, DPoP and external issuers (docs/identity.md)."""

    #: ``required``: every task must be opened with a DPoP proof and every use of its token
    #: carries one; ``optional``: bound only when the agent sends a proof; ``auto``:
    #: required when ``environment = "prod"``, optional elsewhere.
    dpop: str = "auto"
    dpop_window_seconds: int = 60  # how old a proof's `iat` may be
    #: Lifetime of the JWT-SVIDs the local Workload API issues (30-3600).
    svid_ttl_seconds: int = 300
    workload_socket: str = "workload.sock"  # relative to the state dir; "" disables the socket
    public_url: str = ""  # e.g. https://tether.example.com when behind a proxy (DPoP `htu`)
    #: OIDC issuers whose tokens prove workloads (CI jobs, Kubernetes service accounts).
    oidc_issuers: tuple[OidcIssuer, ...] = ()
    #: OIDC issuers whose ID tokens may name a task's human delegator.
    delegator_issuers: tuple[DelegatorIssuer, ...] = ()

    def __post_init__(self) -> None:
        if self.dpop not in DPOP_MODES:
            raise _identity_error("identity.dpop", f"must be one of {', '.join(DPOP_MODES)}")
        if not 5 <= self.dpop_window_seconds <= 600:
            raise _identity_error("identity.dpop_window_seconds", "must be between 5 and 600")
        if not 30 <= self.svid_ttl_seconds <= 3600:
            raise _identity_error("identity.svid_ttl_seconds", "must be between 30 and 3600")
        if self.public_url:
            _issuer_url(self.public_url, "identity.public_url")
        for name, cls in (("oidc_issuers", OidcIssuer), ("delegator_issuers", DelegatorIssuer)):
            value: Any = getattr(self, name)
            if not isinstance(value, list | tuple):
                raise _identity_error(f"identity.{name}", "must be a list of tables")
            built = tuple(
                v if isinstance(v, cls) else _build(cls, v, f"identity.{name}[{i}].")
                for i, v in enumerate(value)
            )
            issuers = [b.issuer for b in built]
            if len(set(issuers)) != len(issuers):
                raise _identity_error(f"identity.{name}", "lists an issuer twice")
            object.__setattr__(self, name, built)

    def dpop_required(self, environment: str) -> bool:
        return self.dpop == "required" or (self.dpop == "auto" and environment == "prod")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    #: SPIFFE IDs of remote enforcement points (HTTP/MCP gateways in other processes)
    #: allowed to call ``/v1/gateway/*`` and receive enforcer-only credential material.
    #: Empty: no remote gateway is trusted (co-located gateways need no entry).
    enforcers: tuple[str, ...] = ()
    #: A routes file (relative to the state directory): serve the HTTP gateway inside the
    #: broker's process, under ``http_mount`` on the broker's own listener.
    http_routes: str = ""
    #: The path prefix of the in-process HTTP gateway (``/gw`` → ``/gw/<route>/…``).
    http_mount: str = "/gw"

    def __post_init__(self) -> None:
        if not self.http_mount.startswith("/") or self.http_mount == "/" or self.http_mount.endswith("/"):
            raise ConfigError(
                "`gateway.http_mount` must be a path like `/gw`",
                code="config_invalid",
                field="gateway.http_mount",
            )
        value: Any = self.enforcers
        if isinstance(value, str):  # from the environment: comma or space separated
            value = value.replace(",", " ").split()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                "`gateway.enforcers` must be a list of SPIFFE IDs",
                code="config_invalid",
                field="gateway.enforcers",
            )
        object.__setattr__(self, "enforcers", tuple(value))


@dataclass(frozen=True, slots=True)
class PolicySettings:
    #: A candidate policy directory evaluated beside the enforced one on every decision
    #: (shadow mode, docs/policy-change.md); its answers are audited, never enforced.
    #: Empty: no shadow. Relative paths are under the state directory.
    shadow: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path
    #: HOST:PORT of the HTTP API (and console, gateway mount, JWKS).
    listen: str = "127.0.0.1:8421"
    store: str = ""  # empty → sqlite in the state directory
    #: A short name policies read as ``context.environment`` (``prod`` also makes DPoP required
    #: under ``identity.dpop = "auto"``).
    environment: str = "dev"
    #: The broker's own SPIFFE trust domain: SVIDs of the local Workload API, the audience.
    trust_domain: str = "tether.local"
    node_id: str = "node-1"  # names this writer's audit chain; unique per replica
    audience: str = ""  # empty → spiffe://<trust_domain>/tether
    issuer: str = ""  # empty → the audience
    #: Directory of ``*.cedar`` files (relative to the state directory); reloaded on SIGHUP.
    policy_dir: str = "policies"
    #: The catalog (services, tools, datasets, intents; docs/catalog.md), read at start.
    catalog_file: str = "catalog.yaml"
    #: Other trust domains whose JWT-SVIDs the broker accepts (SPIRE, another broker).
    trust_bundles: tuple[TrustBundle, ...] = ()
    tasks: TaskLimits = field(default_factory=TaskLimits)
    credentials: CredentialSettings = field(default_factory=CredentialSettings)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    keys: KeySettings = field(default_factory=KeySettings)
    limits: Limits = field(default_factory=Limits)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    oauth: OAuthSettings = field(default_factory=OAuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

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
    def shadow_path(self) -> Path | None:
        return self._resolve(self.policy.shadow) if self.policy.shadow else None

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

    def resolve(self, value: str) -> Path:
        """A path setting: absolute, or relative to the state directory."""
        return self._resolve(value)

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
            raise ConfigError(
                f"`{name}` must be an integer, got `{value}`", code="config_invalid", field=name
            ) from None
    if typ is str or typ == str | None:
        if value is None and typ is not str:
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
            raise ConfigError(
                f"unknown setting `{prefix}{key}`", code="config_invalid", field=f"{prefix}{key}"
            )
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
    """``TETHER_<SETTING>[__<KEY>]`` variables whose first part names a setting.

    Other ``TETHER_*`` variables (``TETHER_STATE_DIR``, ``TETHER_MASTER_KEY``, the SDK's
    ``TETHER_TASK_TOKEN``, …) belong to other parts of the system and are left alone.
    """
    settable = {f.name for f in fields(Settings)} - {"state_dir"}
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("TETHER_"):
            continue
        path = key[len("TETHER_") :].lower().split("__")
        if path[0] not in settable:
            continue
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
        ("limits.max_waits_per_caller", s.limits.max_waits_per_caller, 1),
        ("limits.store_timeout_ms", s.limits.store_timeout_ms, 100),
        ("limits.header_timeout_seconds", s.limits.header_timeout_seconds, 1),
        ("limits.body_timeout_seconds", s.limits.body_timeout_seconds, 1),
        ("limits.keepalive_seconds", s.limits.keepalive_seconds, 1),
        ("limits.max_connections", s.limits.max_connections, 8),
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


def load_settings(
    state_dir: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
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

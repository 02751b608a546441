"""``routes.toml``: which paths the HTTP gateway forwards, and as what action on what.

::

    [gateway]
    listen = "127.0.0.1:8480"
    timeout_seconds = 30

    [[routes]]
    prefix = "/github"                      # what agents call: http://gateway/github/…
    upstream = "https://api.github.com"     # where it goes
    service = "github"                      # the catalog service

    [[routes.rules]]
    method = "GET"                          # a method, a list of methods, or "*"
    path = "/repos/{owner}/{repo}/issues"   # {name} is one segment; {name:path} the rest
    action = "http:read"
    resource = "github.issues"              # a catalog id; captured parameters are arguments

Only configured routes exist: anything else is a 404, so the gateway is never an open
proxy. Every error names the file and the field (``routes[0].rules[2].action``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tether import actions
from tether.catalog import Catalog
from tether.errors import ConfigError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]{0,63})(:path)?\}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    listen: str = "127.0.0.1:8480"
    max_request_bytes: int = 10 * 1024 * 1024
    max_response_bytes: int = 50 * 1024 * 1024
    connect_timeout_seconds: float = 5.0
    timeout_seconds: float = 30.0  # per read/write of the upstream exchange
    approval_wait_seconds: int = 0  # >0: hold a request this long waiting for a human
    retry_after_seconds: int = 30
    max_connections: int = 100
    #: The URL agents use to reach this gateway (behind a load balancer): DPoP proofs are
    #: checked against it. Empty: the request's own scheme and ``Host``.
    public_url: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    methods: frozenset[str]  # empty: any method
    path: str
    pattern: re.Pattern[str]
    action: str
    resource: str

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.methods and method not in self.methods:
            return None
        m = self.pattern.fullmatch(path)
        return dict(m.groupdict()) if m else None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    prefix: str
    upstream: str  # scheme://host[:port][/base], no trailing slash
    service: str
    rules: tuple[Rule, ...]
    record_bodies: bool = False  # bodies stay out of the audit log unless a route opts in
    headers: Mapping[str, str] = field(default_factory=dict)  # fixed extra upstream headers

    def strip(self, path: str) -> str | None:
        """The path below this route's prefix, or ``None`` when it is not under it."""
        if self.prefix == "/":
            return path
        if path == self.prefix:
            return "/"
        if path.startswith(self.prefix + "/"):
            return path[len(self.prefix) :]
        return None


@dataclass(frozen=True, slots=True)
class RouteTable:
    options: GatewayOptions
    routes: tuple[Route, ...]
    source: str = "<memory>"

    def find(self, path: str) -> tuple[Route, str] | None:
        """The route with the longest prefix covering ``path``, and the rest of the path."""
        for route in self.routes:  # sorted longest prefix first
            rest = route.strip(path)
            if rest is not None:
                return route, rest
        return None

    def check_catalog(self, catalog: Catalog) -> None:
        """Every rule's resource must be a catalog entry of its route's service."""
        for i, route in enumerate(self.routes):
            svc = catalog.get(route.service)
            if svc is None or svc.kind != "service":
                raise _err(self.source, f"routes[{i}].service", f"`{route.service}` is not a catalog service")
            for j, rule in enumerate(route.rules):
                res = catalog.get(rule.resource)
                if res is None or res.service != route.service:
                    raise _err(
                        self.source,
                        f"routes[{i}].rules[{j}].resource",
                        f"`{rule.resource}` is not in the catalog under service `{route.service}`",
                    )


def _err(source: str, where: str, why: str) -> ConfigError:
    return ConfigError(f"{source}: `{where}` {why}", code="config_invalid", field=where)


def compile_path(path: str, where: str, source: str) -> re.Pattern[str]:
    if not path.startswith("/"):
        raise _err(source, where, "must start with `/`")
    parts = path.strip("/").split("/") if path != "/" else []
    out, names = [], set()
    for k, seg in enumerate(parts):
        m = _PARAM_RE.match(seg)
        if m:
            name, rest = m.group(1), bool(m.group(2))
            if name in names:
                raise _err(source, where, f"captures `{name}` twice")
            if rest and k != len(parts) - 1:
                raise _err(source, where, "`{name:path}` may only be the last segment")
            names.add(name)
            out.append(f"(?P<{name}>.+)" if rest else f"(?P<{name}>[^/]+)")
        elif _SEGMENT_RE.match(seg) and seg not in (".", ".."):
            out.append(re.escape(seg))
        else:
            raise _err(source, where, f"has an invalid segment `{seg}`")
    return re.compile("/" + "/".join(out) + ("/?" if out else ""))


def _num(
    raw: Mapping[str, Any],
    key: str,
    default: float,
    lo: float,
    hi: float,
    where: str,
    source: str,
    integer: bool = True,
) -> Any:
    value = raw.get(key, default)
    wrong_kind = integer and not isinstance(value, int)
    if isinstance(value, bool) or not isinstance(value, int | float) or wrong_kind:
        raise _err(source, f"{where}{key}", "must be a number" if not integer else "must be an integer")
    if not lo <= value <= hi:
        raise _err(source, f"{where}{key}", f"must be between {lo} and {hi}")
    return value


def _options(raw: Any, source: str) -> GatewayOptions:
    if not isinstance(raw, dict):
        raise _err(source, "gateway", "must be a table")
    known = set(GatewayOptions.__dataclass_fields__)
    for key in raw:
        if key not in known:
            raise _err(source, f"gateway.{key}", "is not a known setting")
    d = GatewayOptions()
    listen = raw.get("listen", d.listen)
    if not isinstance(listen, str) or ":" not in listen:
        raise _err(source, "gateway.listen", "must be HOST:PORT")
    w = "gateway."
    return GatewayOptions(
        listen=listen,
        max_request_bytes=_num(raw, "max_request_bytes", d.max_request_bytes, 0, 2**40, w, source),
        max_response_bytes=_num(raw, "max_response_bytes", d.max_response_bytes, 0, 2**40, w, source),
        connect_timeout_seconds=float(_num(raw, "connect_timeout_seconds", 5.0, 0.1, 600, w, source, False)),
        timeout_seconds=float(_num(raw, "timeout_seconds", 30.0, 0.1, 3600, w, source, False)),
        approval_wait_seconds=_num(raw, "approval_wait_seconds", 0, 0, 3600, w, source),
        retry_after_seconds=_num(raw, "retry_after_seconds", 30, 1, 86400, w, source),
        max_connections=_num(raw, "max_connections", 100, 1, 10000, w, source),
        public_url=_public_url(raw.get("public_url", ""), source),
    )


def _public_url(value: Any, source: str) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if value == "":
        return ""
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise _err(source, "gateway.public_url", "must be an http(s) URL")
    return str(value).rstrip("/")


def _rule(raw: Any, where: str, source: str) -> Rule:
    if not isinstance(raw, dict):
        raise _err(source, where, "must be a table")
    for key in raw:
        if key not in ("method", "path", "action", "resource"):
            raise _err(source, f"{where}.{key}", "is not a known field")
    for key in ("method", "path", "action", "resource"):
        if key not in raw:
            raise _err(source, f"{where}.{key}", "is required")
    method = raw["method"]
    methods = [method] if isinstance(method, str) else method
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise _err(source, f"{where}.method", "must be a method, a list of methods or `*`")
    if methods == ["*"]:
        allowed: frozenset[str] = frozenset()
    else:
        for m in methods:
            if not _METHOD_RE.match(m):
                raise _err(source, f"{where}.method", f"`{m}` is not an upper-case HTTP method")
        if "CONNECT" in methods:  # tunnels cannot be authorized per request
            raise _err(source, f"{where}.method", "`CONNECT` cannot be forwarded")
        allowed = frozenset(methods)
    path, action, resource = raw["path"], raw["action"], raw["resource"]
    if not isinstance(path, str):
        raise _err(source, f"{where}.path", "must be a string")
    if action not in actions.SCOPED:
        raise _err(source, f"{where}.action", f"`{action}` is not a known action")
    if not isinstance(resource, str) or not _ID_RE.match(resource):
        raise _err(source, f"{where}.resource", f"`{resource}` is not a catalog id")
    return Rule(allowed, path, compile_path(path, f"{where}.path", source), action, resource)


def _route(raw: Any, i: int, source: str) -> Route:
    where = f"routes[{i}]"
    if not isinstance(raw, dict):
        raise _err(source, where, "must be a table")
    known = ("name", "prefix", "upstream", "service", "rules", "record_bodies", "headers")
    for key in raw:
        if key not in known:
            raise _err(source, f"{where}.{key}", "is not a known field")
    for key in ("prefix", "upstream", "service", "rules"):
        if key not in raw:
            raise _err(source, f"{where}.{key}", "is required")
    prefix = raw["prefix"]
    if not isinstance(prefix, str) or not prefix.startswith("/") or (prefix != "/" and prefix.endswith("/")):
        raise _err(source, f"{where}.prefix", "must start with `/` and not end with `/`")
    compile_path(prefix, f"{where}.prefix", source)  # literal segments only
    if "{" in prefix:
        raise _err(source, f"{where}.prefix", "may not capture parameters")
    upstream = raw["upstream"]
    parts = urlsplit(upstream) if isinstance(upstream, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        raise _err(source, f"{where}.upstream", "must be an http(s) URL without query, fragment or userinfo")
    service = raw["service"]
    if not isinstance(service, str) or not _ID_RE.match(service):
        raise _err(source, f"{where}.service", "must be a catalog service id")
    rules_raw = raw["rules"]
    if not isinstance(rules_raw, list) or not rules_raw:
        raise _err(source, f"{where}.rules", "must list at least one rule")
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str)
        and re.fullmatch(r"[A-Za-z0-9-]{1,64}", k)
        and isinstance(v, str)
        and not any(c in v for c in "\r\n\0")
        for k, v in headers.items()
    ):
        raise _err(source, f"{where}.headers", "must map header names to single-line values")
    if any(k.lower() in ("authorization", "host", "cookie") for k in headers):
        raise _err(source, f"{where}.headers", "may not set `Authorization`, `Host` or `Cookie`")
    record = raw.get("record_bodies", False)
    if not isinstance(record, bool):
        raise _err(source, f"{where}.record_bodies", "must be true or false")
    name = raw.get("name", prefix)
    return Route(
        name=str(name),
        prefix=prefix,
        upstream=upstream.rstrip("/"),
        service=service,
        rules=tuple(_rule(r, f"{where}.rules[{j}]", source) for j, r in enumerate(rules_raw)),
        record_bodies=record,
        headers={k.lower(): v for k, v in headers.items()},
    )


def parse_routes(doc: Mapping[str, Any], source: str = "<memory>") -> RouteTable:
    for key in doc:
        if key not in ("gateway", "routes"):
            raise _err(source, key, "is not a known section")
    options = _options(doc.get("gateway", {}), source)
    routes_raw = doc.get("routes")
    if not isinstance(routes_raw, list) or not routes_raw:
        raise _err(source, "routes", "must list at least one `[[routes]]` table")
    routes = [_route(r, i, source) for i, r in enumerate(routes_raw)]
    seen: set[str] = set()
    for i, r in enumerate(routes):
        if r.prefix in seen:
            raise _err(source, f"routes[{i}].prefix", f"`{r.prefix}` is used twice")
        seen.add(r.prefix)
    routes.sort(key=lambda r: len(r.prefix), reverse=True)
    return RouteTable(options, tuple(routes), source)


def load_routes(path: Path) -> RouteTable:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read routes file `{path}`: {exc.strerror}", code="config_invalid") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", code="config_invalid") from exc
    return parse_routes(doc, str(path))

"""Typed tool arguments, canonicalized before policy sees them.

A rule written over raw strings can be defeated by spelling: ``/data/public/../secret``
matches ``like "/data/public/*"``, ``%2e%2e`` hides the dots, a list packed into one
JSON string lets a ``*`` span two entries. The catalog therefore declares what each
argument *is* (:class:`ArgSpec`), and :func:`canonicalize` turns every declared value
into one canonical form before Cedar runs:

* ``path``: percent-decoding (to a fixed point), NUL and control characters, backslashes
  and ``~`` refused; relative paths resolved against the single declared root;
  ``.``/``..``/repeated and trailing slashes removed; a path outside every declared
  root raises :class:`ArgumentRefused` (``path_outside_roots``) — an invariant deny,
  before policy. Symlinks are resolved (:func:`resolve_symlinks`) only where the
  upstream's filesystem is the caller's (a gateway with a stdio upstream); the broker
  works lexically.
* ``url``: scheme/host/port/path, host IDNA-normalized (UTS 46) and lower-cased,
  userinfo and ambiguous numeric hosts refused, dot segments removed, fragment dropped.
* ``email``: one ``local@domain``, no display names, lists or comments; domain IDNA-normalized.
* ``host``: a DNS name (IDNA) or an IP address in its canonical text.
* ``enum``, ``integer``, ``number`` (bounded), ``string``.

A list value is a list of the declared kind: every element is canonicalized, and policy
sees sets, so a rule applies to every element. The Cedar shape (see
``tether.cedarschema``: ``Args``/``Arg``) is built by :meth:`Canonical.cedar_entity`.
This module does no I/O except through the ``realpath`` callable :func:`resolve_symlinks`
is given.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import idna

from tether.errors import InvalidRequest

__all__ = [
    "KINDS",
    "ArgSpec",
    "ArgumentRefused",
    "Canonical",
    "canonicalize",
    "parse_arg_specs",
    "resolve_symlinks",
]

KINDS = ("path", "url", "email", "host", "enum", "integer", "number", "string")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_MAX_PATH = 4096
_MAX_DEPTH = 64
_MAX_ITEMS = 256
_MAX_TEXT = 8192
_DEFAULT_SCHEMES = ("https", "http")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERICISH = re.compile(r"^[0-9a-fx.]+$")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_UNRESERVED_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_SPEC_FIELDS = frozenset(
    {"type", "roots", "values", "min", "max", "schemes", "max_items", "max_length", "required", "description"}
)


class ArgumentRefused(InvalidRequest):
    """An argument that cannot be canonicalized, or leaves its declared roots: an invariant
    deny before policy. ``code`` is ``path_outside_roots``, ``argument_invalid`` or
    ``argument_missing``; ``argument`` names the argument (never its value)."""

    default_code = "argument_invalid"


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """What one declared argument is. ``roots`` are canonical absolute folders."""

    name: str
    kind: str
    roots: tuple[str, ...] = ()
    values: tuple[str, ...] = ()  # enum
    minimum: float | None = None
    maximum: float | None = None
    schemes: tuple[str, ...] = _DEFAULT_SCHEMES
    max_items: int = 64
    max_length: int = 4096
    required: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.roots:
            out["roots"] = list(self.roots)
        if self.values:
            out["values"] = list(self.values)
        if self.minimum is not None:
            out["min"] = self.minimum
        if self.maximum is not None:
            out["max"] = self.maximum
        if self.kind == "url":
            out["schemes"] = list(self.schemes)
        out.update(max_items=self.max_items, max_length=self.max_length, required=self.required)
        return out


def _refuse(name: str, why: str, code: str = "argument_invalid") -> ArgumentRefused:
    return ArgumentRefused(f"argument `{name}`: {why}", code=code, argument=name)


# -- declarations ------------------------------------------------------------------------


def _lexical(raw: str) -> str:
    """``.``/``..``/repeated and trailing slashes of an absolute path, without I/O."""
    out = posixpath.normpath(raw)
    return "/" + out.lstrip("/")  # normpath keeps a POSIX-special leading `//`


def parse_arg_specs(raw: Any, where: str) -> dict[str, ArgSpec]:
    """``arguments:`` of a catalog entry → specs; errors name ``where`` and the argument."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{where}: `arguments` must map names to types", code="catalog_invalid")
    out: dict[str, ArgSpec] = {}
    for name, spec in raw.items():
        at = f"{where}: arguments.{name}"
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", name):
            raise InvalidRequest(f"{where}: invalid argument name `{name}`", code="catalog_invalid")
        if not isinstance(spec, Mapping):
            raise InvalidRequest(f"{at}: expected a type name or a mapping", code="catalog_invalid")
        unknown = sorted(set(spec) - _SPEC_FIELDS)
        if unknown:
            raise InvalidRequest(f"{at}: unknown field `{unknown[0]}`", code="catalog_invalid")
        kind = spec.get("type")
        if kind not in KINDS:
            raise InvalidRequest(f"{at}: `type` must be one of {', '.join(KINDS)}", code="catalog_invalid")
        roots: list[str] = []
        for r in spec.get("roots") or ():
            if not isinstance(r, str) or not r.startswith("/") or "\0" in r:
                raise InvalidRequest(f"{at}: every root must be an absolute path", code="catalog_invalid")
            roots.append(_lexical(r))
        if kind == "path" and not roots:
            # Fail closed: a path with no roots could name anything. `roots: [/]` says so.
            raise InvalidRequest(f"{at}: a `path` needs `roots` (use [/] for any)", code="catalog_invalid")
        values = spec.get("values") or ()
        if kind == "enum" and (not values or not all(isinstance(v, str) for v in values)):
            raise InvalidRequest(f"{at}: an `enum` needs `values`, a list of strings", code="catalog_invalid")
        schemes = tuple(str(s).lower() for s in spec.get("schemes") or _DEFAULT_SCHEMES)
        bounds = []
        for key in ("min", "max"):
            value = spec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidRequest(f"{at}: `{key}` must be a number", code="catalog_invalid")
            bounds.append(value)
        limits = []
        for key, default, top in (("max_items", 64, _MAX_ITEMS), ("max_length", 4096, _MAX_TEXT)):
            value = spec.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= top:
                raise InvalidRequest(f"{at}: `{key}` must be 1-{top}", code="catalog_invalid")
            limits.append(value)
        out[name] = ArgSpec(
            name,
            kind,
            tuple(dict.fromkeys(roots)),
            tuple(values),
            bounds[0],
            bounds[1],
            schemes,
            limits[0],
            limits[1],
            bool(spec.get("required", False)),
        )
    return out


# -- one value ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Acc:
    """What the values of one argument add up to, in Cedar's terms."""

    values: list[str] = field(default_factory=list)
    under: set[str] | None = None  # intersection over the values
    under_any: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    schemes: set[str] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    low: float | None = None
    high: float | None = None

    def folders(self, path: str) -> None:
        chain = {"/"}
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            chain.add("/" + "/".join(parts[:i]))
        self.under = chain if self.under is None else self.under & chain
        self.under_any |= chain

    def number(self, value: float) -> None:
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)


def _no_controls(name: str, text: str) -> None:
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise _refuse(name, f"control or format character U+{ord(ch):04X} refused")


def _under_root(path: str, roots: Iterable[str]) -> str | None:
    for root in roots:
        if root == "/" or path == root or path.startswith(root + "/"):
            return root
    return None


def _path(spec: ArgSpec, value: Any, acc: _Acc) -> str:
    name = spec.name
    if not isinstance(value, str) or not value:
        raise _refuse(name, "must be a non-empty path")
    text = value
    for _ in range(4):  # %252e → %2e → . : decode to a fixed point, a bounded number of times
        try:
            decoded = unquote(text, errors="strict")
        except UnicodeDecodeError:
            raise _refuse(name, "percent-encoding that is not UTF-8") from None
        if decoded == text:
            break
        text = decoded
    else:
        raise _refuse(name, "nested percent-encoding refused")
    if len(text) > _MAX_PATH:
        raise _refuse(name, f"longer than {_MAX_PATH} characters")
    _no_controls(name, text)
    if "\\" in text:
        raise _refuse(name, "backslashes are refused in paths")
    if text.startswith("~"):
        raise _refuse(name, "`~` is not expanded; give an absolute path")
    if not text.startswith("/"):
        if len(spec.roots) != 1:
            raise _refuse(name, "a relative path needs exactly one declared root; give an absolute path")
        text = spec.roots[0] + "/" + text
    path = _lexical(text)
    if path.count("/") > _MAX_DEPTH:
        raise _refuse(name, f"deeper than {_MAX_DEPTH} folders")
    if _under_root(path, spec.roots) is None:
        raise _refuse(name, "the path is outside every declared root", "path_outside_roots")
    acc.folders(path)
    return path


def _resolve(spec: ArgSpec, path: str, realpath: Callable[[str], str]) -> str:
    """Follow symlinks on the upstream's filesystem, then name the result by its declared
    root (so ``/data`` → ``/mnt/data`` does not move a path out of ``/data/public``). A
    target outside every root comes back as its real path, which the check then refuses."""
    real = _lexical(realpath(path))
    for root in spec.roots:
        real_root = _lexical(realpath(root))
        if real_root == "/" or real == real_root or real.startswith(real_root + "/"):
            return root if real == real_root else _lexical(root + real[len(real_root) :])
    return real


def resolve_symlinks(
    specs: Mapping[str, ArgSpec], arguments: Mapping[str, Any], realpath: Callable[[str], str]
) -> dict[str, Any]:
    """``arguments`` with each declared path replaced by what it resolves to.

    For an enforcement point whose upstream shares its filesystem (a stdio server): the
    result then goes through :func:`canonicalize` like any call, so a symlink out of the
    roots is the same audited ``path_outside_roots`` deny as ``..``. Values that are not
    canonical paths are left as they are for :func:`canonicalize` to refuse.
    """
    out = dict(arguments)
    for name, spec in specs.items():
        raw = arguments.get(name)
        if spec.kind != "path" or raw is None:
            continue
        items = list(raw) if isinstance(raw, list | tuple) else [raw]
        resolved: list[Any] = []
        for item in items:
            try:
                resolved.append(_resolve(spec, _path(spec, item, _Acc()), realpath))
            except (ArgumentRefused, OSError, ValueError):
                resolved.append(item)
        out[name] = resolved if isinstance(raw, list | tuple) else resolved[0]
    return out


def _idna_host(name: str, host: str) -> str:
    host = host.rstrip(".") if host.endswith(".") and not host.endswith("..") else host
    if not host:
        raise _refuse(name, "empty host")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if _NUMERICISH.match(host.lower()):
        # `0x7f.1`, `2130706433`, `127.1`: an HTTP client may read these as an address.
        raise _refuse(name, f"`{host[:64]}` is an ambiguous numeric host")
    try:
        ascii_host = idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise _refuse(name, f"host is not a valid domain name ({exc})") from None
    labels = ascii_host.lower().split(".")
    if len(ascii_host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _refuse(name, "host is not a valid domain name")
    return ".".join(labels)


def _url_path(raw: str) -> str:
    # RFC 3986 §6.2.2: decode unreserved characters, upper-case the other escapes, then
    # remove dot segments (so `%2e%2e` is `..` and goes away like `..`).
    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch.isascii() and (ch.isalnum() or ch in "-._~") else "%" + m.group(1).upper()

    path = _UNRESERVED_PCT.sub(fix, raw) or "/"
    trailing = path.endswith("/") and path != "/"
    path = _lexical(path)
    return path + "/" if trailing and path != "/" else path


def _url(spec: ArgSpec, value: Any, acc: _Acc) -> str:
    name = spec.name
    if not isinstance(value, str) or not value:
        raise _refuse(name, "must be a URL")
    if len(value) > spec.max_length:
        raise _refuse(name, f"longer than {spec.max_length} characters")
    _no_controls(name, value)
    if any(c.isspace() for c in value) or "\\" in value:
        raise _refuse(name, "whitespace and backslashes are refused in URLs")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise _refuse(name, f"not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in spec.schemes:
        raise _refuse(name, f"scheme `{scheme[:16]}` is not one of {', '.join(spec.schemes)}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _refuse(name, "user info in a URL is refused")
    host = _idna_host(name, unquote(parts.hostname or ""))
    port = port if port is not None else _DEFAULT_PORTS.get(scheme, 0)
    path = _url_path(parts.path)
    shown = f"[{host}]" if ":" in host else host
    default = _DEFAULT_PORTS.get(scheme)
    text = f"{scheme}://{shown}{'' if port == default else f':{port}'}{path}"
    if parts.query:
        text += "?" + parts.query
    acc.hosts.add(host)
    acc.schemes.add(scheme)
    acc.ports.add(port)
    acc.folders(path)
    return text


def _email(spec: ArgSpec, value: Any, acc: _Acc) -> str:
    name = spec.name
    if not isinstance(value, str) or value.count("@") != 1 or len(value) > 320:
        raise _refuse(name, "must be one address `local@domain`")
    _no_controls(name, value)
    local, domain = value.rsplit("@", 1)
    if not _EMAIL_LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        # No quoted parts, display names, comments or `a@x,b@y` lists: one plain mailbox.
        raise _refuse(name, "the local part must be a plain mailbox name")
    host = _idna_host(name, domain)
    acc.hosts.add(host)
    return f"{local}@{host}"


def _number(spec: ArgSpec, value: Any, acc: _Acc) -> str:
    name = spec.name
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(name, f"must be {'an integer' if spec.kind == 'integer' else 'a number'}")
    if spec.kind == "integer" and not isinstance(value, int):
        raise _refuse(name, "must be an integer")
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(name, "must be finite")
    if isinstance(value, int) and not _LONG_MIN <= value <= _LONG_MAX:
        raise _refuse(name, "is out of range")
    if spec.minimum is not None and value < spec.minimum:
        raise _refuse(name, f"must be at least {spec.minimum}")
    if spec.maximum is not None and value > spec.maximum:
        raise _refuse(name, f"must be at most {spec.maximum}")
    acc.number(value)
    return str(value)


def _scalar(spec: ArgSpec, value: Any, acc: _Acc) -> Any:
    """The canonical value (as the upstream should receive it) of one element."""
    kind = spec.kind
    if kind == "path":
        return _path(spec, value, acc)
    if kind == "url":
        return _url(spec, value, acc)
    if kind == "email":
        return _email(spec, value, acc)
    if kind == "host":
        if not isinstance(value, str):
            raise _refuse(spec.name, "must be a host name")
        _no_controls(spec.name, value)
        host = _idna_host(spec.name, value)
        acc.hosts.add(host)
        return host
    if kind in ("integer", "number"):
        acc.values.append(_number(spec, value, acc))
        return value
    if not isinstance(value, str) or len(value) > spec.max_length:
        raise _refuse(spec.name, f"must be a string of at most {spec.max_length} characters")
    if kind == "enum" and value not in spec.values:
        raise _refuse(spec.name, f"must be one of {', '.join(spec.values)}")
    return value


# -- a whole call ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Canonical:
    """The declared arguments of one call after canonicalization.

    ``forward``: every argument as the upstream should receive it (declared ones
    canonical, undeclared ones untouched). ``typed``: the Cedar ``Arg`` record of each
    declared argument present. ``scalars``: canonical text of declared non-list values
    (the ``context.call`` tag). ``paths``/``under``/``hosts``: over the whole call.
    """

    forward: dict[str, Any]
    typed: dict[str, dict[str, Any]]
    scalars: dict[str, str]
    paths: tuple[str, ...] = ()
    under: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def cedar_entity(self, uid: Mapping[str, str]) -> dict[str, Any]:
        return {
            "uid": dict(uid),
            "attrs": {"paths": list(self.paths), "under": list(self.under), "hosts": list(self.hosts)},
            "tags": self.typed,
            "parents": [],
        }

    def audit(self) -> dict[str, Any]:
        """What policy read, for the decision record: canonical values by argument."""
        return {k: sorted(v["values"]) if v["count"] != 1 else v["values"][0] for k, v in self.typed.items()}


EMPTY = Canonical({}, {}, {})


def canonicalize(specs: Mapping[str, ArgSpec], arguments: Mapping[str, Any]) -> Canonical:
    """Canonicalize the declared arguments of one call (lexically: symlinks are
    :func:`resolve_symlinks`'s job); raise :class:`ArgumentRefused`."""
    if not specs:
        return Canonical(dict(arguments), {}, {}) if arguments else EMPTY
    forward = dict(arguments)
    typed: dict[str, dict[str, Any]] = {}
    scalars: dict[str, str] = {}
    all_paths: list[str] = []
    under: set[str] | None = None
    hosts: set[str] = set()
    for name, spec in specs.items():
        if name not in arguments or arguments[name] is None:
            if spec.required:
                raise _refuse(name, "is required", "argument_missing")
            continue
        raw = arguments[name]
        acc = _Acc()
        is_list = isinstance(raw, list | tuple)
        items = list(raw) if is_list else [raw]
        if len(items) > spec.max_items:
            raise _refuse(name, f"at most {spec.max_items} items")
        canon = [_scalar(spec, item, acc) for item in items]
        if spec.kind not in ("integer", "number"):
            acc.values = [str(c) for c in canon]
        forward[name] = canon if is_list else canon[0]
        if not is_list:
            scalars[name] = acc.values[0]
        if spec.kind == "path":
            all_paths.extend(acc.values)
            under = (acc.under or set()) if under is None else under & (acc.under or set())
        hosts |= acc.hosts
        typed[name] = {
            "kind": spec.kind,
            "values": sorted(set(acc.values)),
            "count": len(items),
            "under": sorted(acc.under or ()),
            "under_any": sorted(acc.under_any),
            "hosts": sorted(acc.hosts),
            "schemes": sorted(acc.schemes),
            "ports": sorted(acc.ports),
            "min": _long(math.floor(acc.low)) if acc.low is not None else 0,
            "max": _long(math.ceil(acc.high)) if acc.high is not None else 0,
        }
    return Canonical(
        forward,
        typed,
        scalars,
        tuple(sorted(set(all_paths))),
        tuple(sorted(under or ())),
        tuple(sorted(hosts)),
    )


def _long(value: int) -> int:
    return max(_LONG_MIN, min(_LONG_MAX, value))

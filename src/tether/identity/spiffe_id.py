"""SPIFFE IDs, parsed strictly after the SPIFFE-ID specification (section 2).

``spiffe://<trust-domain>/<path>``: the trust domain is lowercase letters, digits, ``.``,
``-`` and ``_``; path segments add uppercase letters; nothing is percent-decoded and no
URL part other than scheme, authority and path is allowed. We deliberately do not use
``urllib.parse``: it lowercases, tolerates ports, userinfo and empty segments, and two
parsers that disagree about one identity is how authorization bypasses start.
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.errors import InvalidRequest

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = _TD_CHARS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE ID. ``path`` is empty or starts with ``/`` (never ends with one)."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"

    @property
    def is_trust_domain_id(self) -> bool:
        """True for ``spiffe://td`` itself, which names a domain, not a workload."""
        return self.path == ""


def _show(value: str, limit: int = 64) -> str:
    """Echo user input safely: bounded, and with control characters escaped."""
    shown = value if len(value) <= limit else value[:limit] + "…"
    return shown.encode("unicode_escape").decode("ascii") if not shown.isprintable() else shown


def _bad(why: str) -> InvalidRequest:
    return InvalidRequest(f"invalid SPIFFE ID: {why}", code="invalid_spiffe_id")


def valid_trust_domain(td: str) -> bool:
    """Whether ``td`` is a valid trust domain name (no scheme, no path)."""
    return isinstance(td, str) and 0 < len(td) <= MAX_TRUST_DOMAIN_BYTES and all(c in _TD_CHARS for c in td)


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse ``value`` or raise ``InvalidRequest(code="invalid_spiffe_id")`` saying why."""
    if not isinstance(value, str):
        raise _bad("must be a string")
    # Length first, before any other work, and in bytes as the spec counts them.
    if len(value) > MAX_ID_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise _bad(f"longer than {MAX_ID_BYTES} bytes")
    if value == "":
        raise _bad("empty")
    if not value.startswith(SCHEME_PREFIX):
        if value.lower().startswith(SCHEME_PREFIX):
            raise _bad(f"scheme must be lowercase `spiffe` in `{_show(value)}`")
        raise _bad(f"scheme must be `spiffe://` in `{_show(value)}`")
    if "?" in value:
        raise _bad(f"query is not allowed in `{_show(value)}`")
    if "#" in value:
        raise _bad(f"fragment is not allowed in `{_show(value)}`")

    rest = value[len(SCHEME_PREFIX) :]
    td, slash, path = rest.partition("/")
    if td == "":
        raise _bad(f"missing trust domain in `{_show(value)}`")
    if "@" in td:
        raise _bad(f"userinfo is not allowed in `{_show(value)}`")
    if ":" in td:
        raise _bad(f"port is not allowed in `{_show(value)}`")
    if len(td) > MAX_TRUST_DOMAIN_BYTES:
        raise _bad(f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    for c in td:
        if c not in _TD_CHARS:
            raise _bad(
                f"trust domain has invalid character `{_show(c)}`; "
                "use lowercase letters, digits, `.`, `-` or `_`"
            )
    if not slash:
        return SpiffeId(td, "")
    for segment in path.split("/"):
        # An empty segment also catches a trailing slash and `//`.
        if segment == "":
            raise _bad(f"path has an empty segment or trailing slash in `{_show(value)}`")
        if segment in (".", ".."):
            raise _bad(f"path segment `{segment}` is not allowed")
        for c in segment:
            if c not in _PATH_CHARS:
                raise _bad(f"path has invalid character `{_show(c)}`; use letters, digits, `.`, `-` or `_`")
    return SpiffeId(td, "/" + path)

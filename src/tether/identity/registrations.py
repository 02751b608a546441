"""Workload registration entries: which local processes get which SPIFFE ID.

An entry is a SPIFFE ID (in the broker's own trust domain), a set of selectors and
optional attributes. A process matches an entry when *every* selector matches what the
kernel and /proc say about it (:class:`~tether.identity.attestor.PeerFacts`).

Selectors (the ``unix`` attestor of SPIRE uses the same names):

    unix:uid:<n>       unix:user:<name>     effective uid of the caller
    unix:gid:<n>       unix:group:<name>    effective primary gid of the caller
    unix:path:<abs>    the executable's path (symlinks resolved by the kernel)
    unix:sha256:<hex>  SHA-256 of the executable's content

Every entry needs a uid/user/gid/group selector: an entry matched by path or digest
alone would hand its identity to every local account that can run that program.
"""

from __future__ import annotations

import grp
import json
import pwd
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from tether.errors import InvalidRequest, NotFound
from tether.identity.spiffe_id import parse_spiffe_id
from tether.store.identity_tables import workload_entries

SELECTOR_TYPES = ("uid", "user", "gid", "group", "path", "sha256")
_PRINCIPAL_TYPES = frozenset({"uid", "user", "gid", "group"})
_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")
_ATTR_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_SELECTORS = 16
MAX_ATTRIBUTES = 32


@dataclass(frozen=True, slots=True)
class Selector:
    type: str
    value: str

    def __str__(self) -> str:
        return f"unix:{self.type}:{self.value}"


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    spiffe_id: str
    selectors: tuple[Selector, ...]
    attributes: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    created_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.id,
            "spiffe_id": self.spiffe_id,
            "selectors": [str(s) for s in self.selectors],
            "attributes": dict(self.attributes),
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


def _bad(why: str, field_name: str = "selectors") -> InvalidRequest:
    return InvalidRequest(why, code="invalid_selector", field=field_name)


def parse_selector(text: str) -> Selector:
    """``unix:TYPE:VALUE`` → :class:`Selector`, or ``InvalidRequest(code="invalid_selector")``."""
    if not isinstance(text, str) or len(text) > 4096:
        raise _bad("a selector must be a string such as `unix:uid:1000`")
    kind, _, rest = text.partition(":")
    typ, _, value = rest.partition(":")
    shown = text[:80]
    if kind != "unix":
        raise _bad(f"selector `{shown}` must start with `unix:` (the local attestor)")
    if typ not in SELECTOR_TYPES:
        raise _bad(f"selector type `{typ[:32]}` is unknown; use one of {', '.join(SELECTOR_TYPES)}")
    if typ in ("uid", "gid"):
        if not value.isdigit() or len(value) > 10 or int(value) > 2**32 - 2:
            raise _bad(f"`unix:{typ}` needs a number, got `{value[:32]}`")
        value = str(int(value))  # one spelling: 0100 and 100 must not be two entries
    elif typ in ("user", "group"):
        if not _NAME.fullmatch(value):
            raise _bad(f"`unix:{typ}` needs an account name, got `{value[:32]}`")
    elif typ == "path":
        if not value.startswith("/") or "\x00" in value or "/../" in value + "/" or "/./" in value + "/":
            raise _bad(f"`unix:path` needs an absolute, normalized path, got `{value[:80]}`")
    elif typ == "sha256":
        value = value.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise _bad("`unix:sha256` needs 64 hex digits")
    return Selector(typ, value)


def parse_attributes(attrs: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(attrs, Mapping) or len(attrs) > MAX_ATTRIBUTES:
        raise InvalidRequest(
            f"`attributes` must be at most {MAX_ATTRIBUTES} key=value pairs",
            code="invalid_attribute",
            field="attributes",
        )
    out: dict[str, str] = {}
    for k, v in attrs.items():
        if not isinstance(k, str) or not _ATTR_KEY.fullmatch(k):
            raise InvalidRequest(
                f"attribute name `{str(k)[:64]}` must be a short identifier",
                code="invalid_attribute",
                field="attributes",
            )
        if not isinstance(v, str) or len(v) > 256:
            raise InvalidRequest(
                f"attribute `{k}` must be a string of at most 256 characters",
                code="invalid_attribute",
                field="attributes",
            )
        out[k] = v
    return out


def validate_entry(spiffe_id: str, selectors: Sequence[str], trust_domain: str) -> tuple[Selector, ...]:
    sid = parse_spiffe_id(spiffe_id)
    if sid.trust_domain != trust_domain:
        raise InvalidRequest(
            f"the broker issues SVIDs for `{trust_domain}` only, not `{sid.trust_domain}`",
            code="foreign_trust_domain",
            field="spiffe_id",
        )
    if sid.is_trust_domain_id:
        raise InvalidRequest(
            "a workload SPIFFE ID needs a path, e.g. `spiffe://td/agents/triage`",
            code="invalid_spiffe_id",
            field="spiffe_id",
        )
    if not isinstance(selectors, list | tuple) or not selectors or len(selectors) > MAX_SELECTORS:
        raise _bad(f"give 1-{MAX_SELECTORS} selectors, e.g. `--selector unix:uid:1000`")
    parsed = tuple(sorted({parse_selector(s) for s in selectors}, key=str))
    if not any(s.type in _PRINCIPAL_TYPES for s in parsed):
        raise _bad(
            "add a `unix:uid:`, `unix:user:`, `unix:gid:` or `unix:group:` selector: "
            "path and digest alone would match every local account"
        )
    return parsed


def _entry(row: Any) -> Entry:
    m = row._mapping
    sels = tuple(parse_selector(s) for s in json.loads(m["selectors"]))
    return Entry(m["id"], m["spiffe_id"], sels, json.loads(m["attributes"]), m["created_at"], m["created_by"])


def insert_entry(
    conn: Connection, spiffe_id: str, selectors: tuple[Selector, ...], attributes: Mapping[str, str], by: str
) -> Entry:
    e = Entry(f"wle_{secrets.token_urlsafe(12)}", spiffe_id, selectors, dict(attributes), time.time(), by)
    for other in list_entries(conn, spiffe_id=spiffe_id):
        if other.selectors == selectors:
            raise InvalidRequest(
                f"entry `{other.id}` already gives `{spiffe_id}` these selectors",
                code="duplicate_entry",
                entry_id=other.id,
            )
    conn.execute(
        insert(workload_entries).values(
            id=e.id,
            spiffe_id=e.spiffe_id,
            selectors=json.dumps([str(s) for s in selectors]),
            attributes=json.dumps(dict(sorted(e.attributes.items()))),
            created_at=e.created_at,
            created_by=by,
        )
    )
    return e


def list_entries(conn: Connection, *, spiffe_id: str | None = None) -> list[Entry]:
    q = select(workload_entries).order_by(workload_entries.c.spiffe_id, workload_entries.c.created_at)
    if spiffe_id:
        q = q.where(workload_entries.c.spiffe_id == spiffe_id)
    return [_entry(r) for r in conn.execute(q)]


def get_entry(conn: Connection, entry_id: str) -> Entry:
    row = conn.execute(select(workload_entries).where(workload_entries.c.id == entry_id)).first()
    if row is None:
        raise NotFound(
            f"no registration entry `{entry_id[:80]}`; see `tether workload list`", code="entry_not_found"
        )
    return _entry(row)


def delete_entry(conn: Connection, entry_id: str) -> Entry:
    e = get_entry(conn, entry_id)
    conn.execute(delete(workload_entries).where(workload_entries.c.id == entry_id))
    return e


def _account_id(name: str, group: bool) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid if group else pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def selector_matches(sel: Selector, uid: int, gid: int, path: str | None, sha256: str | None) -> bool:
    """One selector against one caller. Unknown facts (exe unreadable) never match."""
    if sel.type == "uid":
        return str(uid) == sel.value
    if sel.type == "gid":
        return str(gid) == sel.value
    if sel.type == "user":
        return _account_id(sel.value, group=False) == uid
    if sel.type == "group":
        return _account_id(sel.value, group=True) == gid
    if sel.type == "path":
        return path is not None and path == sel.value
    if sel.type == "sha256":
        return sha256 is not None and sha256 == sel.value
    return False

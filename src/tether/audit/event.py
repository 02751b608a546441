"""The audit event: a versioned record, canonical JSON, SHA-256 chained.

``hash = sha256(canonical(event without "hash"))`` where the event includes
``prev_hash``; so editing, deleting, inserting or reordering any event breaks the link
to every later one.

The canonical form depends on the event's schema version ``v``:

* ``v = 3`` (written now): as 2; a ``decision`` that policy evaluated also carries its
  whole input (``payload.input``: principal, action, resource, catalog version, context,
  arguments masked with type and salted digest), so it can be replayed against another
  policy set (``tether.policy.replay``). Decisions of v 1 and 2 are reported as not
  replayable, never guessed.
* ``v = 2``: RFC 8785, the JSON Canonicalization Scheme (:func:`jcs`), so a
  verifier in any language with a JCS library recomputes the hash from the stored event.
* ``v = 1`` (written before 2; still verified): Python's ``json.dumps`` with sorted keys,
  no whitespace, UTF-8 (:func:`canonical_json`). It differs from JCS only in numbers
  (``1.0`` vs ``1``, ``1e+16`` vs ``10000000000000000``) and in the order of keys outside
  the Basic Multilingual Plane.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from json.encoder import encode_basestring
from typing import Any

import orjson

SCHEMA_VERSION = 3
#: Every version this code verifies (oldest first).
SCHEMA_VERSIONS = (1, 2, 3)
#: The first version whose decision events carry their input (replayable).
REPLAYABLE_VERSION = 3
GENESIS_HASH = "0" * 64

# Event types. Names are part of the schema: add, never rename.
WORKLOAD_ATTESTED = "workload.attested"
WORKLOAD_REGISTERED = "workload.registered"
WORKLOAD_REMOVED = "workload.removed"
TASK_OPENED = "task.opened"
TASK_DELEGATED = "task.delegated"
TASK_CLOSED = "task.closed"
TASK_EXPIRED = "task.expired"
TASK_REVOKED = "task.revoked"
DECISION = "decision"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_GRANTED = "approval.granted"
APPROVAL_REJECTED = "approval.rejected"
APPROVAL_EXPIRED = "approval.expired"  # nobody answered in time (the leader's pass)
CREDENTIAL_MINTED = "credential.minted"
CREDENTIAL_REVOKED = "credential.revoked"
CREDENTIAL_IRREVOCABLE = "credential.irrevocable"
CALL_FORWARDED = "call.forwarded"
CALL_RESULT = "call.result"
POLICY_LOADED = "policy.loaded"
POLICY_RELOAD_FAILED = "policy.reload_failed"
# Shadow mode: a candidate set put beside the enforced one (or taken away), and its answers
# that differ from the enforced decision or failed. They never act.
POLICY_SHADOW_SET = "policy.shadow_set"
POLICY_SHADOW_DIVERGED = "policy.shadow_diverged"
POLICY_SHADOW_ERROR = "policy.shadow_error"
TOOL_DEFINITION_CHANGED = "tool.definition_changed"
KEY_ROTATED = "key.rotated"
# The operator console: a human signed in, acted, or was refused; a notification failed.
CONSOLE_SIGNIN = "console.signin"
CONSOLE_ACTION = "console.action"
CONSOLE_REFUSED = "console.refused"
NOTIFY_FAILED = "notify.failed"
# The OAuth front door: a consent, code or exchange granted; a request refused.
OAUTH_GRANTED = "oauth.granted"
OAUTH_REFUSED = "oauth.refused"
# Legacy secrets brought under the broker (`tether secrets import|rotate`).
SECRET_IMPORTED = "secret.imported"  # noqa: S105 (an event type)
SECRET_ROTATED = "secret.rotated"  # noqa: S105 (an event type)
SECRET_ROTATION_FAILED = "secret.rotation_failed"  # noqa: S105 (an event type)

EVENT_TYPES = frozenset(
    {
        WORKLOAD_ATTESTED,
        TASK_OPENED,
        TASK_DELEGATED,
        TASK_CLOSED,
        TASK_EXPIRED,
        TASK_REVOKED,
        DECISION,
        APPROVAL_REQUESTED,
        APPROVAL_GRANTED,
        APPROVAL_REJECTED,
        APPROVAL_EXPIRED,
        CREDENTIAL_MINTED,
        CREDENTIAL_REVOKED,
        CREDENTIAL_IRREVOCABLE,
        CALL_FORWARDED,
        CALL_RESULT,
        POLICY_LOADED,
        POLICY_RELOAD_FAILED,
        POLICY_SHADOW_SET,
        POLICY_SHADOW_DIVERGED,
        POLICY_SHADOW_ERROR,
        TOOL_DEFINITION_CHANGED,
        KEY_ROTATED,
        WORKLOAD_REGISTERED,
        WORKLOAD_REMOVED,
        CONSOLE_SIGNIN,
        CONSOLE_ACTION,
        CONSOLE_REFUSED,
        OAUTH_GRANTED,
        OAUTH_REFUSED,
        NOTIFY_FAILED,
        SECRET_IMPORTED,
        SECRET_ROTATED,
        SECRET_ROTATION_FAILED,
    }
)


def canonical_json(value: Any) -> str:
    """The v1 canonical form (also the digest form of tool pins and approval arguments,
    which are stored and compared: changing it would unpin every tool)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# -- RFC 8785 (JCS) ---------------------------------------------------------------------
# Strings: JSON.stringify's escaping, which is json's with ensure_ascii=False (", \\,
# \b \f \n \r \t, other controls as lowercase \u00xx, everything else literal).
# Numbers: ECMAScript's Number::toString of the IEEE double. Keys: sorted by UTF-16 code
# units. Integers must fit a double exactly (|n| <= 2**53), as I-JSON requires: a bigger
# one would be read back as another number by every other implementation.

_MAX_EXACT_INT = 2**53
_float_repr = float.__repr__


def jcs_number(x: float) -> str:
    """ECMAScript ``Number::toString`` of a finite double (RFC 8785 section 3.2.2.3)."""
    r = _float_repr(x)
    if "e" not in r and r[-1].isdigit():
        # repr is positional for 1e-4 <= |x| < 1e16, and then spells x as ECMAScript
        # does, except that an integral value keeps a ".0".
        if r.endswith(".0"):
            return "0" if r in ("0.0", "-0.0") else r[:-2]
        return r
    if not math.isfinite(x):
        raise ValueError(f"{r} is not a JSON number")
    if x < 0:
        return "-" + jcs_number(-x)
    # x = 0.<s> * 10**n with s the shortest round-trip digits (repr's), then the layout.
    mant, _, exp = r.partition("e")
    int_part, _, frac = mant.partition(".")
    digits = int_part + frac
    n = len(int_part) + int(exp or 0)
    s = digits.lstrip("0")
    n -= len(digits) - len(s)
    s = s.rstrip("0")
    k = len(s)
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + s
    e = n - 1
    return s[0] + ("." + s[1:] if k > 1 else "") + ("e+" if e > 0 else "e-") + str(abs(e))


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _jcs_into(value: Any, out: list[str]) -> None:
    # Exact type checks first: bool is an int subclass and must print as true/false.
    t = type(value)
    if t is str:
        out.append(_encode_str(value))
    elif t is dict:
        keys = list(value)
        if not all(type(k) is str for k in keys):
            value = _str_keys(value)
            keys = list(value)
        if all(k.isascii() for k in keys):
            keys.sort()
        else:
            keys.sort(key=_utf16_key)
        out.append("{")
        first = True
        for k in keys:
            if not first:
                out.append(",")
            first = False
            out.append(_encode_str(k))
            out.append(":")
            _jcs_into(value[k], out)
        out.append("}")
    elif t is list or t is tuple:
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _jcs_into(item, out)
        out.append("]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif t is int:
        if not -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT:
            raise ValueError(f"integer {value} does not fit a double exactly (RFC 8785 needs I-JSON)")
        out.append(str(value))
    elif t is float:
        out.append(jcs_number(value))
    elif isinstance(value, str | int | float | dict | list | tuple):
        _jcs_into(_plain(value), out)  # subclasses (IntEnum, OrderedDict, …) as their base type
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return str.__str__(value)  # `class C(str, Enum)`: the text, not "C.member"
    bases: tuple[Any, ...] = (bool, int, float, dict, list, tuple)
    for base in bases:
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")  # pragma: no cover


def _str_keys(value: dict[Any, Any]) -> dict[str, Any]:
    # Non-string keys become strings the way json.dumps spells them (the v1 form did this).
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(k, str):
            key = str.__str__(k)
        elif k is None or isinstance(k, bool):
            key = {None: "null", True: "true", False: "false"}[k]
        elif isinstance(k, int):
            key = str(int(k))
        elif isinstance(k, float):
            key = jcs_number(k)
        else:
            raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")
        if key in out:
            raise ValueError(f"two keys spell `{key}`")
        out[key] = v
    return out


def _encode_str(value: str) -> str:
    # A lone surrogate has no UTF-8 form: refuse it here rather than hash something else.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("string holds a lone surrogate; it has no UTF-8 form") from None
    return str(encode_basestring(value))


def jcs(value: Any) -> str:
    """RFC 8785 canonical JSON of ``value`` (hash its UTF-8 bytes).

    About twice the time of ``json.dumps`` on a decision event's body (15 vs 9 µs here);
    a fast path through the C encoder plus a regex check of its output measured slower.
    """
    out: list[str] = []
    _jcs_into(value, out)
    return "".join(out)


# orjson hands subclasses, dataclasses and datetimes to ``default`` (there is none, so it
# raises) instead of writing them its own way; integers beyond 2**53 raise too (I-JSON).
_FAST = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_STRICT_INTEGER
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)
_STRUCTURE = re.compile(r"[{}\[\],:]")


def jcs_fast(value: Any) -> str | None:
    """:func:`jcs` of ``value`` through orjson's C encoder when its text is certainly the
    RFC 8785 text; ``None`` when it might differ (the caller then runs :func:`jcs`).

    Sorted keys, minimal escapes and no whitespace are the same in both for a text that is
    ASCII (so key order by UTF-8 equals order by UTF-16) and holds no backslash (no escape
    at all). What is left to check is the numbers: orjson writes NaN and infinities as
    ``null`` (so a ``null`` outside strings sends the payload the slow way, which refuses
    them) and some floats in another spelling (``1.0``, ``1e16``), so each float is
    compared with its JCS form. (orjson also writes ``uuid.UUID`` and plain ``Enum``
    members, which :func:`jcs` refuses; no payload builder passes them.)
    """
    try:
        raw = orjson.dumps(value, option=_FAST)
    except orjson.JSONEncodeError:
        return None
    if not raw.isascii() or b"\\" in raw:
        return None
    text = raw.decode("ascii")
    # Without escapes every '"' opens or closes a string: the even pieces are the rest.
    outside = "".join(text.split('"')[::2])
    if "null" in outside:
        return None
    bare = outside.replace("true", "").replace("false", "")
    if "." in bare or "e" in bare or "E" in bare:
        for token in _STRUCTURE.split(bare):
            if ("." in token or "e" in token or "E" in token) and jcs_number(float(token)) != token:
                return None
    return text


def canonical_for(v: int) -> Any:
    """The canonical-form function events of schema version ``v`` are hashed with."""
    if v >= 2:
        return jcs
    return canonical_json


@dataclass(frozen=True, slots=True)
class Event:
    chain: str
    seq: int
    ts: float
    type: str
    prev_hash: str
    payload: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    root_task_id: str | None = None
    parent_task_id: str | None = None
    agent: str | None = None
    delegator: str | None = None
    decision_id: str | None = None
    lease_id: str | None = None
    trace_id: str | None = None
    v: int = SCHEMA_VERSION
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """Everything the hash covers (every field but ``hash``).

        Built field by field rather than with ``asdict``: that deep-copies the payload,
        and this runs once per event on the authorize hot path.
        """
        return {f: getattr(self, f) for f in _BODY_FIELDS}

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical_for(self.v)(self.body()).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_BODY_FIELDS = tuple(f.name for f in fields(Event) if f.name != "hash")

# The fields an emitter may set; the chain sets the rest.
EVENT_FIELDS = (
    "task_id",
    "root_task_id",
    "parent_task_id",
    "agent",
    "delegator",
    "decision_id",
    "lease_id",
    "trace_id",
)


def _js(value: str | None) -> str:
    return "null" if value is None else str(encode_basestring(value))


def _ts(ts: float, v: int) -> str:
    return jcs_number(ts) if v >= 2 else _float_repr(ts)


def row_hash(
    *,
    chain: str,
    seq: int,
    ts: float,
    type: str,
    prev_hash: str,
    payload_text: str,
    task_id: str | None,
    root_task_id: str | None,
    parent_task_id: str | None,
    agent: str | None,
    delegator: str | None,
    decision_id: str | None,
    lease_id: str | None,
    trace_id: str | None,
    v: int,
) -> str:
    """``Event.compute_hash`` for a stored row, without parsing its payload.

    The payload column already holds the canonical JSON of the event's version, so the
    canonical body is assembled around it as text (keys in sorted order; every name is
    ASCII, so code-point and UTF-16 order agree). This is what makes ``verify`` fast; a test
    pins it to ``compute_hash``. A payload re-spelled in a non-canonical way (same data,
    other bytes) no longer hashes the same, which is what we want from a tamper check.
    """
    body = (
        f'{{"agent":{_js(agent)},"chain":{_js(chain)},"decision_id":{_js(decision_id)},'
        f'"delegator":{_js(delegator)},"lease_id":{_js(lease_id)},'
        f'"parent_task_id":{_js(parent_task_id)},"payload":{payload_text},'
        f'"prev_hash":{_js(prev_hash)},"root_task_id":{_js(root_task_id)},"seq":{int(seq)},'
        f'"task_id":{_js(task_id)},"trace_id":{_js(trace_id)},"ts":{_ts(float(ts), v)},'
        f'"type":{_js(type)},"v":{int(v)}}}'
    )
    return hashlib.sha256(body.encode()).hexdigest()

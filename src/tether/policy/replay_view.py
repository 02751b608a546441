"""What of a decision's input a policy set can observe: the key of replay's answer cache.

Replay meets the same request again and again (one agent reading one queue all week):
only task ids, ages, remaining seconds and argument values no rule names tell them apart.
:class:`View` reads the candidate set in Cedar's JSON form and records, for every
context field and tag it names, how it is read. :meth:`View.key` then maps a recorded
input to a text that is equal for two inputs exactly when no policy of the set can tell
them apart; replay asks Cedar once per key.

The rules, all conservative (anything not recognised keeps the value itself in the key):

* A context field or tag a policy reads only by comparing it with literals (``==``,
  ``!=``, ``<``, ``<=``, ``>``, ``>=`` with a Long or String or Bool literal, ``like``, a
  literal set's ``contains``) is replaced by its type and the answers of those
  comparisons: ``calls_last_minute`` compared with ``> 120`` keys as "Long, false".
* A field read in any other way (arithmetic, a comparison with another field, a method,
  a record or set equality, the bare ``context``) keeps its whole value.
* A field no policy names keys as its type (with the key names of a record), so schema
  validation of the request — which checks types and shapes, never values — fails alike.
* A tag no policy names is left out (Cedar cannot enumerate tags; ``hasTag`` and
  ``getTag`` name their key) — unless some policy computes a tag key, then every tag stays.
* The principal, action, resource, entity attributes and argument paths and hosts are
  kept whole.

A set in templates form, or one the parser refuses, gets the view that keeps everything.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import cedarpy
import orjson

from tether.audit.masking import TYPED_MASK_KEY

__all__ = ["View"]

Pred = Callable[[Any], Any]
_CMP = {"==", "!=", "<", "<=", ">", ">="}
_FLIP = {"==": "==", "!=": "==", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ENTITY_REFS = {("ctx", "call"), ("ctx", "args")}  # ours: always the same two entity ids
_LEAVES = {"Value", "Var", "Slot", "Unknown"}


class _Node:
    """How one field (or tag, or tag attribute) is read; ``children`` by attribute name."""

    __slots__ = ("bounds", "children", "equals", "likes", "raw")

    def __init__(self) -> None:
        self.raw = False
        self.children: dict[str, _Node] = {}
        #: Literals it is compared with for equality, by type (Cedar's == is false across
        #: types: 1 == true is false, where Python says True).
        self.equals: dict[type, set[Any]] = {}
        #: Long literals it is ordered against (<, <=, >, >=).
        self.bounds: set[int] = set()
        #: ``like`` patterns it is matched with.
        self.likes: list[Pred] = []

    def compare(self, op: str, lit: Any) -> None:
        if op in ("==", "!="):  # != is the negation: the same information
            self.equals.setdefault(type(lit), set()).add(lit)
        elif type(lit) is int:
            self.bounds.add(lit)
        # An ordering against a String or Bool literal is a type error whatever the
        # value: the type tag the key carries tells those apart already.

    def child(self, name: str) -> _Node:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Node()
        return node


_TAG: dict[type, str] = {bool: "b", int: "i", str: "s"}


def _kind(v: Any) -> str | None:
    """A scalar's Cedar type tag, None for anything else."""
    return _TAG.get(type(v))


def _like(pattern: list[Any]) -> Pred:
    parts = [".*" if p == "Wildcard" else re.escape(str(p["Literal"])) for p in pattern]
    rx = re.compile("".join(parts), re.DOTALL)
    return lambda v: type(v) is str and rx.fullmatch(v) is not None


def _literal(e: Any) -> Any:
    """The scalar literal ``e`` is, or _NO."""
    if isinstance(e, dict) and "Value" in e and _kind(e["Value"]) is not None:
        return e["Value"]
    return _NO


class _Analysis:
    def __init__(self) -> None:
        self.ctx = _Node()
        self.tags = _Node()  # children: tag keys (of any entity)
        self.all_tags = False  # some tag key is computed

    def node(self, path: tuple[str, ...]) -> _Node:
        node = self.ctx if path[0] == "ctx" else self.tags
        for name in path[1:]:
            node = node.child(name)
        return node

    def path(self, e: Any) -> tuple[str, ...] | None:
        """The field ``e`` reads: ("ctx", attr…) or ("tag", key, attr…); None otherwise."""
        if not isinstance(e, dict) or len(e) != 1:
            return None
        op, body = next(iter(e.items()))
        if op == "Var":
            return ("ctx",) if body == "context" else None
        if op == "." and isinstance(body, dict):
            p = self.path(body.get("left"))
            return None if p is None else (*p, str(body["attr"]))
        if op == "getTag" and isinstance(body, dict):
            key = _literal(body.get("right"))
            return ("tag", key) if isinstance(key, str) else None
        return None

    def sides(self, e: Any) -> None:
        """Visit what a field expression reads besides the field: the entity of a tag."""
        op, body = next(iter(e.items()))
        if op == ".":
            self.sides(body["left"])
        elif op == "getTag":
            self.entity(body["left"])

    def entity(self, e: Any) -> None:
        if self.path(e) in _ENTITY_REFS:
            return
        self.use(e)

    def read(self, e: Any, op: str, arg: Any) -> bool:
        p = self.path(e)
        if p is None:
            return False
        node = self.node(p)
        if op == "like":
            node.likes.append(_like(arg))
        else:
            node.compare(op, arg)
        self.sides(e)
        return True

    def use(self, e: Any) -> None:
        """``e`` is evaluated and its value consumed in a way not recognised below."""
        p = self.path(e)
        if p is not None:
            self.node(p).raw = True
            self.sides(e)
            return
        if isinstance(e, list):
            for x in e:
                self.use(x)
            return
        if not isinstance(e, dict):
            return
        for op, body in e.items():
            if op in _LEAVES:
                continue
            if op == "Record" and isinstance(body, dict):
                self.use(list(body.values()))  # its keys are names, not operators
                continue
            if self.special(op, body):
                continue
            self.children(body)

    def children(self, body: Any) -> None:
        if isinstance(body, list):
            for x in body:
                self.use(x)
        elif isinstance(body, dict):
            for k, x in body.items():
                if k not in ("attr", "pattern", "entity_type"):
                    self.use(x)

    def special(self, op: str, body: Any) -> bool:
        """Handle the reads that are only comparisons with literals; True when done."""
        if not isinstance(body, dict):
            return False
        if op in _CMP:
            left, right = body.get("left"), body.get("right")
            lit = _literal(right)
            if lit is not _NO and self.read(left, op, lit):
                return True
            lit = _literal(left)
            return lit is not _NO and self.read(right, _FLIP[op], lit)
        if op == "like":
            return self.read(body.get("left"), "like", body["pattern"])
        if op == "contains":
            items = body.get("left", {}).get("Set") if isinstance(body.get("left"), dict) else None
            if isinstance(items, list) and all(_literal(x) is not _NO for x in items):
                p = self.path(body.get("right"))
                if p is not None:
                    node = self.node(p)
                    for x in items:
                        node.compare("==", _literal(x))
                    self.sides(body["right"])
                    return True
            return False
        if op == "has":
            p = self.path(body.get("left"))
            if p is None:
                return False
            self.node(p).child(str(body["attr"]))  # presence: kept by the record's shape
            self.sides(body["left"])
            return True
        if op in ("hasTag", "getTag"):
            key = _literal(body.get("right"))
            if isinstance(key, str):
                self.tags.child(key)
            else:
                self.all_tags = True
                self.use(body.get("right"))
            self.entity(body.get("left"))
            return True
        return False


def _opaque(v: dict[str, Any]) -> bool:
    """An entity or extension value, or a masked one (kept as recorded: its digest is
    the value's identity; replay resolves it only when it asks Cedar)."""
    return "__entity" in v or "__extn" in v or TYPED_MASK_KEY in v


def _shape(v: Any) -> Any:
    """What schema validation sees of a value no policy reads: its type (and a record's
    field names)."""
    tag = _TAG.get(type(v))
    if tag is not None:
        return tag
    if type(v) is dict and not _opaque(v):
        return {k: _TAG.get(type(x)) or _shape(x) for k, x in v.items()}
    return v


def _identity(v: Any) -> Any:
    return v


def _compile(node: _Node) -> Callable[[Any], Any]:
    """The function mapping a value read as ``node`` says to what the key keeps of it."""
    if node.raw:
        return _identity
    children = {k: _compile(c) for k, c in node.children.items()}
    equals = {t: frozenset(lits) for t, lits in node.equals.items()}
    bounds = sorted(node.bounds)
    likes = tuple(node.likes)
    plain = not (equals or bounds or likes)

    def scalar(v: Any) -> Any:
        t = type(v)
        tag = _TAG.get(t)
        if tag is None:
            return _shape(v)  # a record where a scalar was compared: its shape tells
        if plain:
            return tag
        # Which literal it equals, and where it falls among the bounds: every
        # comparison with a literal answers the same for two values that agree on these.
        hit = v if v in equals.get(t, ()) else None
        if likes:
            return (tag, hit, *_bounds(v, t), *[p(v) for p in likes])
        return (tag, hit, *_bounds(v, t)) if bounds else (tag, hit)

    def _bounds(v: Any, t: type) -> tuple[int, int] | tuple[()]:
        return (bisect_left(bounds, v), bisect_right(bounds, v)) if bounds and t is int else ()

    if not children:
        return scalar
    pick = children.get

    def record(v: Any) -> Any:
        if type(v) is not dict:
            return scalar(v)
        if _opaque(v):
            return v
        return {k: pick(k, _shape)(x) for k, x in v.items()}

    return record


class View:
    """The part of a recorded input a policy set can observe (see the module docstring)."""

    def __init__(self, analysis: _Analysis | None) -> None:
        self._whole = analysis is None
        a = analysis or _Analysis()
        self._ctx = _compile(a.ctx)
        self._tag_sig = {k: _compile(c) for k, c in a.tags.children.items()}
        self._all_tags = a.all_tags or analysis is None

    @classmethod
    def of(cls, sources: Iterable[str]) -> View:
        """The view of the policies in ``sources`` (Cedar texts, joined as the loader does)."""
        texts = list(sources)
        if not texts:
            return cls(None)
        try:
            doc = json.loads(cedarpy.policies_to_json_str("\n".join(texts)))
        except (ValueError, RuntimeError):
            return cls(None)
        if doc.get("templates") or doc.get("templateLinks"):
            return cls(None)
        a = _Analysis()
        for policy in doc.get("staticPolicies", {}).values():
            for cond in policy.get("conditions", ()):
                a.use(cond["body"])
        return cls(a)

    @classmethod
    def whole(cls) -> View:
        """The view that keeps every part of the input."""
        return cls(None)

    @property
    def keeps_all(self) -> bool:
        """True when the key is the whole input (nothing could be left out exactly)."""
        return self._whole

    @property
    def tag_names(self) -> frozenset[str] | None:
        """Tag keys a policy can read; None when every tag must be kept."""
        return None if self._all_tags else frozenset(self._tag_sig)

    def tags(self, tags: Mapping[str, Any]) -> Any:
        if self._all_tags:
            return tags
        ch = self._tag_sig
        return {k: ch[k](v) for k, v in tags.items() if k in ch} if tags else tags

    def key(self, inp: Mapping[str, Any]) -> str:
        """Equal for two (unmasked) inputs exactly when no policy can tell them apart."""
        p = inp["principal"]
        typed = inp["args"]
        if self._whole:
            seen: Any = inp
        else:
            seen = [
                inp["action"],
                inp["resource"],
                inp.get("resource_entity"),
                p["id"],
                p["trust_domain"],
                p["attestation"],
                self.tags(p["tags"]),
                self.tags(inp["call"]),
                self.tags(typed),
                # The Args attributes are derived from every typed argument: kept whole.
                [(a.get("values"), a.get("under"), a.get("hosts"), a.get("kind")) for a in typed.values()]
                if typed
                else None,
                self._ctx(inp["context"]),
            ]
        return orjson.dumps(seen, option=orjson.OPT_SORT_KEYS).decode()


_NO = object()

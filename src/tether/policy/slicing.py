"""Policy slicing: a decision hands Cedar only the policies that can apply to it.

Cedar evaluates every policy of a set on every request; with a thousand policies that is
most of a decision's cost. At load, :class:`PolicySlicer` reads each parsed policy (its
JSON form, ``cedarpy.policies_to_json_str``) and records what must hold *before any of
its conditions runs*:

* its scope: the actions it admits (asked of Cedar itself, over the schema's action
  groups), the principal it names (``==``, ``is``) and the resource it names (``==``,
  ``in``, ``is``, ``is … in``, against the resource and its ancestors);
* its guard: the leftmost conjunct of its first ``when``, when that compares a
  ``context`` attribute with string literals (``context.task.intent == "x"``,
  ``["x", "y"].contains(context.task.intent)``).

A policy is left out of a request's slice only when one of those is false for the
request. Cedar evaluates a policy as ``scope && when₁ && …`` left to right and stops at
the first false, and neither a scope test nor a string comparison of an attribute
present in the request can error, so a left-out policy is one whose evaluation would have
been ``false`` *with no error*: it could neither be a determining policy nor report an
error. The slice's answer — decision, determining policies, errors — is therefore the
whole set's (``tests/policy/test_slicing.py`` checks it over random requests). Anything
the slicer does not recognise (``principal in``, a template slot, a guard over an entity
or a value the request lacks) keeps the policy in every slice: over-including is always
exact, only slower. Policies keep their Cedar ids, so reasons map back to the bundle.

Slices are cedarpy handles built on first use and kept in two bounded maps: by request
key (action, principal, resource and its ancestors, guard values) and by the policy ids
they hold, so requests that differ only in what no policy reads share one handle.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

from tether import actions
from tether.policy.loader import PolicyBundle

__all__ = ["PolicySlicer", "Slice", "Uid"]

log = logging.getLogger(__name__)

#: An entity uid as (type, id).
Uid = tuple[str, str]

_ACTION_TYPE = "Tether::Action"
#: Bounds of the two maps (handles are small: a slice holds the few policies that apply).
_KEYS_MAX = 4096
_SETS_MAX = 1024
#: A policy set guarded on more context attributes than this keeps the rest unindexed:
#: each guarded attribute is a lookup on every decision.
_GUARD_PATHS_MAX = 8
# Keys Cedar's JSON gives a meaning other than "record": a value spelled so is an entity
# or an extension value, whose attribute access can error, so no guard is read through it.
_SPECIAL_KEYS = frozenset({"__entity", "__extn"})
_OTHER = 0  # guard value: a string no guard on that attribute names
_UNKNOWN = 1  # guard value: not a plain string in the request; every guarded policy stays


@dataclass(frozen=True, slots=True)
class Slice:
    """The handles a decision evaluates: the slice of the set, and of its approval-free copy."""

    policy_set: cedarpy.PolicySet
    without_approvals: cedarpy.PolicySet | None
    size: int


@dataclass(frozen=True, slots=True)
class _Entry:
    pid: str
    est: Mapping[str, Any]
    approval: bool
    principal: tuple[str, ...] | None  # ("==", type, id) | ("is", type) | None: any principal
    resource: tuple[str, ...] | None  # ("==", t, i) | ("in", t, i) | ("is", T) | ("is_in", T, t, i) | None
    guard: tuple[tuple[str, ...], frozenset[str]] | None  # (context path, literals) | None


def _uid(node: Any) -> Uid | None:
    if isinstance(node, Mapping) and isinstance(node.get("type"), str) and isinstance(node.get("id"), str):
        return (node["type"], node["id"])
    return None


def _principal(scope: Mapping[str, Any]) -> tuple[str, ...] | None:
    op = scope.get("op")
    if op == "==" and (uid := _uid(scope.get("entity"))) is not None:
        return ("==", *uid)
    if op == "is" and "in" not in scope and isinstance(scope.get("entity_type"), str):
        return ("is", scope["entity_type"])
    # `All`, and `in`/`is … in` (kept: which groups an agent is in is not read here).
    return None


def _resource(scope: Mapping[str, Any]) -> tuple[str, ...] | None:
    op = scope.get("op")
    if op == "==" and (uid := _uid(scope.get("entity"))) is not None:
        return ("==", *uid)
    if op == "in" and (uid := _uid(scope.get("entity"))) is not None:
        return ("in", *uid)
    if op == "is" and isinstance(scope.get("entity_type"), str):
        within = scope.get("in")
        if within is None:
            return ("is", scope["entity_type"])
        if isinstance(within, Mapping) and (uid := _uid(within.get("entity"))) is not None:
            return ("is_in", scope["entity_type"], *uid)
    return None  # `All`, or a form not read here (a slot): the policy stays in every slice


def _context_path(node: Any) -> tuple[str, ...] | None:
    path: list[str] = []
    while isinstance(node, Mapping) and isinstance(node.get("."), Mapping):
        attr = node["."].get("attr")
        if not isinstance(attr, str):
            return None
        path.append(attr)
        node = node["."].get("left")
    if node == {"Var": "context"} and path:
        return tuple(reversed(path))
    return None


def _literal(node: Any) -> str | None:
    if isinstance(node, Mapping) and len(node) == 1 and isinstance(node.get("Value"), str):
        return str(node["Value"])
    return None


def _guard(conditions: Sequence[Any]) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """The first test Cedar runs after the scope, when it is a string comparison of a
    context attribute. Only the leftmost conjunct qualifies: a later one runs only after
    the earlier ones, which may error."""
    if not conditions or not isinstance(conditions[0], Mapping) or conditions[0].get("kind") != "when":
        return None
    node = conditions[0].get("body")
    while isinstance(node, Mapping) and isinstance(node.get("&&"), Mapping):
        node = node["&&"].get("left")
    if not isinstance(node, Mapping):
        return None
    eq = node.get("==")
    if isinstance(eq, Mapping):
        for a, b in ((eq.get("left"), eq.get("right")), (eq.get("right"), eq.get("left"))):
            path, lit = _context_path(a), _literal(b)
            if path is not None and lit is not None:
                return (path, frozenset({lit}))
    contains = node.get("contains")
    if isinstance(contains, Mapping):
        path = _context_path(contains.get("right"))
        items = contains.get("left", {}).get("Set") if isinstance(contains.get("left"), Mapping) else None
        if path is not None and isinstance(items, list):
            lits = [_literal(i) for i in items]
            if all(lit is not None for lit in lits):
                return (path, frozenset(lit for lit in lits if lit is not None))
    return None


def _context_value(context: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    """The string Cedar reads at ``context.<path>``, or None when it is not a plain string
    reached through plain records (then a guard on it cannot be trusted to be false)."""
    node: Any = context
    for attr in path:
        if not isinstance(node, Mapping) or _SPECIAL_KEYS.intersection(node) or set(node) == {"type", "id"}:
            return None  # an entity (implicit or not) or an extension value
        if attr not in node:
            return None
        node = node[attr]
    return node if isinstance(node, str) else None


def _admitted_actions(entries: Sequence[_Entry], schema: cedarpy.Schema) -> dict[str, list[_Entry]]:
    """For every action of the schema, the policies whose action scope admits it — asked
    of Cedar: each policy reduced to its action scope, evaluated once per action over the
    schema's action hierarchy."""
    probes = {
        e.pid: {
            "effect": "permit",
            "principal": {"op": "All"},
            "action": e.est["action"],
            "resource": {"op": "All"},
            "conditions": [],
        }
        for e in entries
    }
    policy_set = cedarpy.PolicySet.from_json_str(
        json.dumps({"staticPolicies": probes, "templates": {}, "templateLinks": []})
    )
    hierarchy = cedarpy.Entities.from_json_str("[]", schema)  # the schema's action entities
    by_pid = {e.pid: e for e in entries}
    out: dict[str, list[_Entry]] = {}
    for action in sorted(actions.ALL):
        request = {
            "principal": {"type": "Tether::Agent", "id": "probe"},
            "action": {"type": _ACTION_TYPE, "id": action},
            "resource": {"type": "Tether::Service", "id": "probe"},
            "context": {},
        }
        result = cedarpy.is_authorized(request, policy_set, hierarchy)
        if result.diagnostics.errors:
            raise ValueError(f"action probe failed: {result.diagnostics.errors}")
        admitted = set(result.diagnostics.reasons)
        out[action] = [by_pid[pid] for pid in by_pid if pid in admitted]  # positional order
    return out


def _admits_resource(scope: tuple[str, ...] | None, uid: Uid, ancestors: frozenset[Uid]) -> bool:
    if scope is None:
        return True
    kind = scope[0]
    if kind == "==":
        return (scope[1], scope[2]) == uid
    if kind == "in":
        target = (scope[1], scope[2])
        return target == uid or target in ancestors
    if kind == "is":
        return scope[1] == uid[0]
    target = (scope[2], scope[3])  # is_in
    return scope[1] == uid[0] and (target == uid or target in ancestors)


class _Bounded:
    """A map that forgets its oldest entry past ``limit``; reads take no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: dict[Any, Slice] = {}
        self._lock = threading.Lock()

    def put(self, key: Any, value: Slice) -> None:
        with self._lock:
            while len(self.items) >= self.limit:
                del self.items[next(iter(self.items))]
            self.items[key] = value


class PolicySlicer:
    """The index of one bundle's policies; thread-safe (built once, caches locked on write)."""

    def __init__(self, bundle: PolicyBundle, schema: cedarpy.Schema) -> None:
        if bundle.policy_set is None:
            raise ValueError("an empty bundle has nothing to slice")
        self._bundle = bundle
        combined = "\n".join(bundle.sources[name] for name in bundle.files)
        static: Mapping[str, Any] = json.loads(cedarpy.policies_to_json_str(combined))["staticPolicies"]
        if set(static) != set(bundle.policies):
            raise ValueError("the parsed policies do not match the bundle")
        entries = [
            _Entry(
                pid,
                est,
                bundle.policies[pid].approval is not None,
                _principal(est.get("principal", {})),
                _resource(est.get("resource", {})),
                _guard(est.get("conditions") or []),
            )
            for pid, est in static.items()
        ]
        # Guards on the most used attributes only; a policy guarded on another one is kept.
        counts: dict[tuple[str, ...], int] = {}
        for e in entries:
            if e.guard is not None:
                counts[e.guard[0]] = counts.get(e.guard[0], 0) + 1
        paths = sorted(counts, key=lambda p: (-counts[p], p))[:_GUARD_PATHS_MAX]
        self._guard_paths = tuple(paths)
        literals: dict[tuple[str, ...], set[str]] = {p: set() for p in paths}
        for e in entries:
            if e.guard is not None and e.guard[0] in literals:
                literals[e.guard[0]].update(e.guard[1])
        self._guard_literals = {p: frozenset(v) for p, v in literals.items()}
        self._entries = [
            e if e.guard is None or e.guard[0] in self._guard_literals else _replace_guard(e) for e in entries
        ]
        self._by_action = _admitted_actions(self._entries, schema)
        self._named_principals = {
            (e.principal[1], e.principal[2]) for e in self._entries if e.principal and e.principal[0] == "=="
        }
        self._whole = Slice(bundle.policy_set, bundle.without_approvals, len(self._entries))
        self._keys = _Bounded(_KEYS_MAX)
        self._sets = _Bounded(_SETS_MAX)

    @property
    def size(self) -> int:
        return len(self._entries)

    def slice_for(
        self,
        principal: Uid,
        action: str,
        resource: Uid,
        ancestors: frozenset[Uid],
        context: Mapping[str, Any],
    ) -> Slice:
        """The handles to evaluate this request with: never less than what can apply."""
        entries = self._by_action.get(action)
        if entries is None:
            return self._whole  # an action the index was not built for
        guards = tuple(self._guard_value(p, context) for p in self._guard_paths)
        named = principal if principal in self._named_principals else None
        key = (action, principal[0], named, resource, ancestors, guards)
        found = self._keys.items.get(key)
        if found is not None:
            return found
        values = dict(zip(self._guard_paths, guards, strict=True))
        chosen = tuple(
            e
            for e in entries
            if _admits_principal(e.principal, principal)
            and _admits_resource(e.resource, resource, ancestors)
            and _admits_guard(e.guard, values)
        )
        ids = tuple(e.pid for e in chosen)
        made = self._sets.items.get(ids)
        if made is None:
            made = self._whole if len(chosen) == len(self._entries) else _build(chosen)
            self._sets.put(ids, made)
        self._keys.put(key, made)
        return made

    def _guard_value(self, path: tuple[str, ...], context: Mapping[str, Any]) -> str | int:
        value = _context_value(context, path)
        if value is None:
            return _UNKNOWN
        return value if value in self._guard_literals[path] else _OTHER


def _replace_guard(e: _Entry) -> _Entry:
    return _Entry(e.pid, e.est, e.approval, e.principal, e.resource, None)


def _admits_principal(scope: tuple[str, ...] | None, uid: Uid) -> bool:
    if scope is None:
        return True
    if scope[0] == "==":
        return (scope[1], scope[2]) == uid
    return scope[1] == uid[0]  # is


def _admits_guard(
    guard: tuple[tuple[str, ...], frozenset[str]] | None, values: Mapping[tuple[str, ...], str | int]
) -> bool:
    if guard is None:
        return True
    value = values[guard[0]]
    if isinstance(value, str):
        return value in guard[1]
    return value == _UNKNOWN  # a string no guard names (_OTHER) fails every guard on it


def _build(chosen: Iterable[_Entry]) -> Slice:
    entries = list(chosen)

    def handle(subset: list[_Entry]) -> cedarpy.PolicySet:
        doc = {"staticPolicies": {e.pid: e.est for e in subset}, "templates": {}, "templateLinks": []}
        return cedarpy.PolicySet.from_json_str(json.dumps(doc))

    # As the bundle's: a copy without the @approval forbids, only when there are some.
    plain = [e for e in entries if not e.approval]
    without = handle(plain) if len(plain) != len(entries) else None
    return Slice(handle(entries), without, len(entries))

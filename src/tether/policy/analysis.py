"""Policy analysis: rules that validate against the schema but cannot do what they say.

Cedar's validator checks types, not facts. ``Tool::"emial.send"`` is a well-typed
reference to a tool that does not exist, so a permit naming it validates and never
fires. This module reads a loaded :class:`~tether.policy.loader.PolicyBundle` against
the catalog and warns, naming the file, line and column:

=========================  ==============================================================
kind                       what it means
=========================  ==============================================================
unknown_entity             a ``Service``/``Tool``/``Dataset`` reference the catalog lacks
unknown_action             an action no request names (a group compared with ``==``, a
                           ``context.grant.action`` string outside the action list)
unknown_intent             a ``context.task.intent`` string the catalog does not declare
never_matches              a policy that no request can match, given the catalog
shadowed_permit            a permit that a forbid (without ``@approval``) always overrides
approval_without_unless    an ``@approval`` forbid that a granted approval cannot lift
=========================  ==============================================================

The two match analyses ask Cedar itself: for every (action, resource) pair the catalog
allows, a partial evaluation with the principal and the context unknown leaves each
policy either ``false`` (it cannot match that pair) or a residual condition. A policy
false on every pair never matches; a permit whose residual, on every pair where it can
match, contains a forbid's whole residual can never allow. Both are sound: a warning
is only given when it holds for every request. Partial evaluation is an experimental
Cedar feature and serves analysis only, never a decision.

Warnings are advice; ``--strict`` (``tether policy validate``, ``tether policy reload``)
turns them into a refusal. See docs/policy-analysis.md.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from tether import actions
from tether.catalog import CEDAR_TYPE, Catalog
from tether.errors import PolicyError
from tether.policy.loader import PolicyBundle, PolicyInfo, load_bundle
from tether.policy.locate import find_literal, position_at, tokens

__all__ = ["KINDS", "Analysis", "PolicyWarning", "analyze", "load_checked"]

KINDS = (
    "unknown_entity",
    "unknown_action",
    "unknown_intent",
    "never_matches",
    "shadowed_permit",
    "approval_without_unless",
)
#: The action groups of tether.cedarschema: policies may say `action in` them; no
#: request ever names one.
ACTION_GROUPS = frozenset({"reads", "writes", "sends"})
#: Match analysis runs one partial evaluation per (action, resource) pair; past this
#: many pairs it is skipped (and says so) rather than slow every reload down.
MAX_PAIRS = 4000

_KIND_OF_TYPE = {cedar: kind for kind, cedar in CEDAR_TYPE.items()}
_ACTION_TYPE = "Tether::Action"
_FALSE = {"Value": False}
_TRUE = {"Value": True}


def _path(*attrs: str) -> dict[str, Any]:
    node: dict[str, Any] = {"Var": "context"}
    for attr in attrs:
        node = {".": {"left": node, "attr": attr}}
    return node


_INTENT = _path("task", "intent")
_GRANT_ACTION = _path("grant", "action")
_GRANTED = _path("approval", "granted")


@dataclass(frozen=True, slots=True)
class PolicyWarning:
    """One finding: what is wrong, where it is written, and which policy it is in."""

    kind: str
    file: str
    line: int
    column: int
    policy_id: str
    message: str

    def describe(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message} [{self.kind}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "policy_id": self.policy_id,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Analysis:
    warnings: tuple[PolicyWarning, ...]
    #: What could not be checked, and why (no catalog, a catalog too large).
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"warnings": [w.to_dict() for w in self.warnings], "notes": list(self.notes)}


@dataclass(frozen=True, slots=True)
class _Policy:
    cedar_id: str
    info: PolicyInfo
    est: Mapping[str, Any]
    text: str  # the whole file
    start: int  # offset range of this policy in `text`
    end: int


def analyze(bundle: PolicyBundle, schema: cedarpy.Schema, catalog: Catalog | None) -> Analysis:
    """Every warning for ``bundle``, in file and line order. Never raises for a bundle
    that loaded: an analysis that cannot run becomes a note."""
    if bundle.policy_set is None:
        return Analysis(())
    policies = _policies(bundle)
    notes: list[str] = []
    found: list[PolicyWarning] = []
    for p in policies:
        found.extend(_approval(p))
        found.extend(_actions(p))
    if catalog is None:
        notes.append("no catalog: entity references, intents and matches were not checked")
    else:
        for p in policies:
            found.extend(_entities(p, catalog))
            found.extend(_intents(p, catalog))
        pairs = len(catalog.resources) * len(actions.ALL)
        if pairs > MAX_PAIRS:
            notes.append(f"{pairs} (action, resource) pairs exceed {MAX_PAIRS}: matches were not checked")
        else:
            # A rule that names a missing entity never matches: say why once, not twice.
            named_unknown = {w.policy_id for w in found if w.kind == "unknown_entity"}
            found.extend(_matches(bundle, schema, catalog, policies, named_unknown))
    unique = dict.fromkeys(found)  # a reference written twice on one spot warns once
    ordered = sorted(unique, key=lambda w: (w.file, w.line, w.column, w.kind))
    return Analysis(tuple(ordered), tuple(notes))


def _policies(bundle: PolicyBundle) -> list[_Policy]:
    combined = "\n".join(bundle.sources[name] for name in bundle.files)
    static: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(combined))["staticPolicies"]
    by_file: dict[str, list[tuple[str, PolicyInfo]]] = {}
    for cedar_id, info in bundle.policies.items():
        by_file.setdefault(info.file, []).append((cedar_id, info))
    out: list[_Policy] = []
    for name, entries in by_file.items():
        text = bundle.sources[name]
        line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        starts = [line_starts[min(info.line, len(line_starts)) - 1] for _, info in entries]
        for k, (cedar_id, info) in enumerate(entries):
            end = starts[k + 1] if k + 1 < len(starts) and starts[k + 1] > starts[k] else len(text)
            out.append(_Policy(cedar_id, info, static[cedar_id], text, starts[k], end))
    return out


def _warn(p: _Policy, kind: str, message: str, offset: int | None = None) -> PolicyWarning:
    if offset is None:
        # The effect keyword: the policy's own first word after its annotations.
        offset = p.start
        for s, e in tokens(p.text[p.start : p.end]):
            if p.text[p.start + s : p.start + e] in ("permit", "forbid"):
                offset = p.start + s
                break
    pos = position_at(p.text, offset)
    return PolicyWarning(kind, p.info.file, pos.line, pos.column, p.info.policy_id, message)


def _walk(node: Any) -> Iterator[Any]:
    stack = [node]
    while stack:
        value = stack.pop()
        yield value
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _uids(est: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for node in _walk(est):
        if isinstance(node, Mapping) and set(node) == {"type", "id"}:
            t, i = node["type"], node["id"]
            if isinstance(t, str) and isinstance(i, str):
                yield t, i


def _short(entity_type: str) -> str:
    return entity_type.rsplit("::", 1)[-1]


def _entities(p: _Policy, catalog: Catalog) -> Iterator[PolicyWarning]:
    for entity_type, rid in _uids(p.est):
        kind = _KIND_OF_TYPE.get(entity_type)
        if kind is None:
            continue
        res = catalog.get(rid)
        if res is not None and res.kind == kind:
            continue
        ref = f'{_short(entity_type)}::"{rid}"'
        if res is not None:
            why = f"`{ref}` is not in the catalog: `{rid}` is a {res.kind}, not a {kind}"
        else:
            ids = [r.id for r in catalog.resources.values() if r.kind == kind]
            close = difflib.get_close_matches(rid, ids, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            why = f"`{ref}` is not in the catalog{hint}; a rule naming it never applies"
        yield _warn(p, "unknown_entity", why, find_literal(p.text, p.start, p.end, _short(entity_type), rid))


def _strings_compared(est: Mapping[str, Any], path: Mapping[str, Any]) -> Iterator[str]:
    """String literals that ``path`` is compared with (``==``, ``!=``, ``[…].contains``)."""
    for node in _walk(est):
        if not isinstance(node, Mapping):
            continue
        for op in ("==", "!="):
            pair = node.get(op)
            if isinstance(pair, Mapping):
                sides = (pair.get("left"), pair.get("right"))
                for a, b in (sides, sides[::-1]):
                    if a == path and isinstance(b, Mapping) and isinstance(b.get("Value"), str):
                        yield b["Value"]
        contains = node.get("contains")
        if isinstance(contains, Mapping) and contains.get("right") == path:
            items = contains.get("left", {}).get("Set") if isinstance(contains.get("left"), Mapping) else None
            for item in items or []:
                if isinstance(item, Mapping) and isinstance(item.get("Value"), str):
                    yield item["Value"]


def _intents(p: _Policy, catalog: Catalog) -> Iterator[PolicyWarning]:
    for label in _strings_compared(p.est, _INTENT):
        if label not in catalog.intents:
            close = difflib.get_close_matches(label, list(catalog.intents), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            yield _warn(
                p,
                "unknown_intent",
                f"intent `{label}` is not in the catalog{hint}; no task can have it",
                find_literal(p.text, p.start, p.end, None, label),
            )


def _actions(p: _Policy) -> Iterator[PolicyWarning]:
    for entity_type, aid in _uids(p.est):
        if entity_type != _ACTION_TYPE or aid in actions.ALL or aid in ACTION_GROUPS:
            continue
        yield _warn(
            p,
            "unknown_action",
            f"action `{aid}` is not in Tether's action list; no request names it",
            find_literal(p.text, p.start, p.end, "Action", aid),
        )
    for node in _walk(p.est.get("conditions", [])):
        pair = node.get("==") if isinstance(node, Mapping) else None
        if not isinstance(pair, Mapping):
            continue
        for a, b in ((pair.get("left"), pair.get("right")), (pair.get("right"), pair.get("left"))):
            value = b.get("Value") if isinstance(b, Mapping) else None
            entity = value.get("__entity") if isinstance(value, Mapping) else None
            if a == {"Var": "action"} and isinstance(entity, Mapping) and entity.get("id") in ACTION_GROUPS:
                group = entity["id"]
                yield _warn(
                    p,
                    "unknown_action",
                    f"`{group}` is an action group that no request names: "
                    f'write `action in Action::"{group}"`',
                    find_literal(p.text, p.start, p.end, "Action", group),
                )
    for name in _strings_compared(p.est, _GRANT_ACTION):
        if name not in actions.SCOPED:
            close = difflib.get_close_matches(name, sorted(actions.SCOPED), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            yield _warn(
                p,
                "unknown_action",
                f"`context.grant.action` is never `{name}`: it is not in the action list{hint}",
                find_literal(p.text, p.start, p.end, None, name),
            )


def _split(body: Any, op: str) -> list[Any]:
    if isinstance(body, Mapping) and isinstance(body.get(op), Mapping):
        return _split(body[op]["left"], op) + _split(body[op]["right"], op)
    return [body]


def _approval(p: _Policy) -> Iterator[PolicyWarning]:
    if p.info.approval is None:
        return
    granted_forms = ({"==": {"left": _GRANTED, "right": _TRUE}}, {"==": {"left": _TRUE, "right": _GRANTED}})
    for clause in p.est.get("conditions", []):
        if clause.get("kind") == "unless":
            if any(d == _GRANTED or d in granted_forms for d in _split(clause.get("body"), "||")):
                return
        elif any(c == {"!": {"arg": _GRANTED}} for c in _split(clause.get("body"), "&&")):
            return
    yield _warn(
        p,
        "approval_without_unless",
        "this `@approval` forbid has no `unless { context.approval.granted }`: "
        "a human's yes cannot lift it, so approvals it asks for are never usable",
    )


# -- match analysis (partial evaluation) -------------------------------------------------


def _conjuncts(residual: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The residual's conditions as a set of conjuncts; ``None`` when it cannot match."""
    if residual is None:
        return frozenset({"?unknown"})  # no residual given: assume it may match anything
    out: set[str] = set()
    for clause in residual.get("conditions", []):
        body = clause.get("body")
        if clause.get("kind") == "unless":
            body = {"!": {"arg": body}}
        for c in _split(body, "&&"):
            if c == _FALSE:
                return None
            if c != _TRUE:
                out.add(json.dumps(c, sort_keys=True))
    return frozenset(out)


def _matches(
    bundle: PolicyBundle,
    schema: cedarpy.Schema,
    catalog: Catalog,
    policies: Sequence[_Policy],
    named_unknown: set[str],
) -> list[PolicyWarning]:
    assert bundle.policy_set is not None
    entities = cedarpy.Entities.from_json_str(catalog.entities_json(), schema)
    # Per policy: {pair: conjuncts} for every pair it may match.
    can: dict[str, dict[tuple[str, str], frozenset[str]]] = {p.cedar_id: {} for p in policies}
    for res in catalog.resources.values():
        resource = f"{res.cedar_uid['type']}::{json.dumps(res.id)}"
        for action in sorted(actions.ALL):
            request = {"action": f"{_ACTION_TYPE}::{json.dumps(action)}", "resource": resource}
            result = cedarpy.is_authorized_partial(request, bundle.policy_set, entities, schema)
            residuals: Mapping[str, Any] = result.residuals
            errors = result.diagnostics.errors
            if not residuals:
                continue  # the schema rules the request out (e.g. credential:issue on a tool)
            for p in policies:
                residual = None if errors else residuals.get(p.cedar_id)
                conj = _conjuncts(residual)
                if conj is not None:
                    can[p.cedar_id][(action, res.id)] = conj
    out: list[PolicyWarning] = []
    forbids = [p for p in policies if p.info.effect == "forbid" and p.info.approval is None]
    for p in policies:
        mine = can[p.cedar_id]
        if not mine:
            if p.info.policy_id in named_unknown:
                continue
            out.append(
                _warn(
                    p,
                    "never_matches",
                    f"no request can match this {p.info.effect}, given the catalog "
                    "(no action and resource it names satisfy its scope and conditions)",
                )
            )
            continue
        if p.info.effect != "permit":
            continue
        for f in forbids:
            theirs = can[f.cedar_id]
            if all(pair in theirs and theirs[pair] <= conj for pair, conj in mine.items()):
                other = f"{f.info.file}:{f.info.line}"
                out.append(
                    _warn(
                        p,
                        "shadowed_permit",
                        f"this permit can never allow: forbid `{f.info.policy_id}` ({other}) "
                        "matches every request it matches",
                    )
                )
                break
    return out


def load_checked(
    policy_dir: Path, schema: cedarpy.Schema, catalog: Catalog | None, *, strict: bool = False
) -> tuple[PolicyBundle, Analysis]:
    """Load ``policy_dir`` and analyze it; with ``strict``, a warning refuses the set
    (:class:`PolicyError` code ``policy_warnings``, every warning in ``details``)."""
    bundle = load_bundle(policy_dir, schema)
    result = analyze(bundle, schema, catalog)
    if strict and result.warnings:
        first = result.warnings[0]
        more = len(result.warnings) - 1
        raise PolicyError(
            f"policy warnings refused by --strict: `{first.file}` line {first.line} column "
            f"{first.column}: {first.message}" + (f" (and {more} more)" if more else ""),
            code="policy_warnings",
            file=first.file,
            line=first.line,
            column=first.column,
            warnings=[w.to_dict() for w in result.warnings],
        )
    return bundle, result

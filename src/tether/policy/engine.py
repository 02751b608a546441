"""The policy decision point: one Cedar evaluation per action, failing closed.

The engine holds three immutable cedarpy handles — the schema, the policy set of the
current :class:`PolicyBundle` and the catalog's entities — and never re-parses them
per request (see docs/architecture.md, "Policy"). A decision adds only a per-request delta
of three entities: the calling ``Agent`` (its registration attributes as tags), the
``Call`` whose tags are the call's arguments (``context.call``) and the ``Args`` whose
tags are the arguments the catalog types, canonicalized (``context.args``, see
:mod:`tether.arguments`).

Outcomes and codes (``PolicyResult.code``)::

    allow               at least one permit, no forbid              code None
    approval_required   denied only by forbids carrying @approval,  approval_required
                        and allowed once those are set aside
    deny                a forbid without @approval matched          policy_forbid
                        no permit matched                           no_permit
                        no policy loaded                            no_policy
                        arguments not representable as tags         arguments_invalid
                        a typed argument refused before policy      path_outside_roots,
                        (an invariant: no policy is evaluated)      argument_invalid,
                                                                    argument_missing
                        any Cedar error or exception                policy_error

Cedar skips a policy whose evaluation errors and decides on the rest, so a forbid that
errors can turn into an allow. Here any error denies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cedarpy
import orjson

from tether.arguments import EMPTY, ArgumentRefused, Canonical, canonicalize
from tether.catalog import Catalog, Resource
from tether.errors import InvalidRequest, PolicyError
from tether.model import Decision, Outcome, Reason, Workload
from tether.policy.context import LIFECYCLE_ACTIONS
from tether.policy.loader import PolicyBundle, empty_bundle, load_bundle, load_schema
from tether.policy.shadow import ShadowCounters
from tether.policy.slicing import PolicySlicer, Slice, Uid

__all__ = [
    "PolicyEngine",
    "PolicyPrincipal",
    "PolicyRequest",
    "PolicyResult",
    "ShadowResult",
    "catalog_version",
    "decide_bundle",
    "interpret",
]

log = logging.getLogger(__name__)

NO_POLICY = "no_policy"
NO_PERMIT = "no_permit"
POLICY_FORBID = "policy_forbid"
POLICY_ERROR = "policy_error"
APPROVAL_REQUIRED = "approval_required"
ARGUMENTS_INVALID = "arguments_invalid"

# Argument names become Cedar tag keys that policy authors type by hand; anything
# outside this shape is more likely an injection attempt than a real parameter.
_ARG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_MAX_ARGS = 64
_MAX_ARGS_BYTES = 64 * 1024  # bounds the per-decision parse cost of the Call entity
_CALL_UID = {"type": "Tether::Call", "id": "call"}
_ARGS_UID = {"type": "Tether::Args", "id": "args"}


@dataclass(frozen=True, slots=True)
class PolicyPrincipal:
    """The agent as Cedar sees it: ``Tether::Agent`` with its attributes as tags."""

    spiffe_id: str
    trust_domain: str
    attestation: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_workload(cls, workload: Workload) -> PolicyPrincipal:
        return cls(workload.spiffe_id, workload.trust_domain, workload.attestation, dict(workload.attributes))


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One question to the policy: may ``principal`` do ``action`` on ``resource``?

    ``context`` is built with :mod:`tether.policy.context`; ``arguments`` become the
    tags of ``context.call`` (strings as-is, anything else as compact JSON text).
    """

    principal: PolicyPrincipal
    action: str
    resource: Resource
    context: Mapping[str, Any]
    arguments: Mapping[str, Any] = field(default_factory=dict)
    #: False where no call is being made (a tool list being filtered): typed arguments are
    #: then not checked, so a required one cannot hide its tool. Lifecycle actions
    #: (task:open, task:delegate) never check them: they grant, they do not call.
    check_arguments: bool = True


@dataclass(frozen=True, slots=True)
class PolicyResult:
    outcome: Outcome
    reasons: tuple[Reason, ...]
    policy_version: str
    code: str | None = None
    approval_reason: str | None = None  # set when outcome is APPROVAL_REQUIRED
    errors: tuple[str, ...] = ()  # Cedar diagnostics or the exception, for the audit log
    #: The declared arguments as policy saw them (canonical), for the decision record.
    arguments: Canonical = EMPTY
    #: What Cedar saw, for a replayable decision record (:mod:`tether.policy.replay`);
    #: None when no policy was evaluated. Built from the parts the request was made of.
    input: Mapping[str, Any] | None = None
    #: The shadow set's answer to the same request (``None``: no shadow set in force).
    shadow: ShadowResult | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    def to_decision(self, decision_id: str, approval_id: str | None = None) -> Decision:
        return Decision(
            decision_id,
            self.outcome,
            self.reasons,
            self.policy_version,
            approval_id=approval_id,
            code=self.code,
        )


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """A candidate set's answer beside the enforced one; it never acts.

    ``error`` is set when the shadow evaluation failed (the enforced decision stands)."""

    outcome: Outcome | None
    reasons: tuple[Reason, ...]
    policy_version: str
    code: str | None = None
    error: str | None = None


_DELTA_CACHE_BYTES = 16 * 1024 * 1024  # catalog copies kept, in bytes of catalog JSON
_DELTA_CACHE_MAX = 256


class _DeltaCache:
    """A bounded map of delta text → entities handle. Each handle holds its own copy of the
    catalog's entities, so the bound is in catalog bytes (:data:`_DELTA_CACHE_BYTES`)."""

    def __init__(self, catalog_bytes: int) -> None:
        self.limit = min(_DELTA_CACHE_MAX, _DELTA_CACHE_BYTES // max(catalog_bytes, 1))
        self._items: dict[str, cedarpy.Entities] = {}
        self._lock = threading.Lock()

    def get(self, base: cedarpy.Entities, delta: str) -> cedarpy.Entities:
        found = self._items.get(delta)
        if found is not None:
            return found
        entities = base.with_added_json_str(delta)
        if self.limit:
            with self._lock:
                while len(self._items) >= self.limit:
                    del self._items[next(iter(self._items))]  # the oldest
                self._items[delta] = entities
        return entities


@dataclass(frozen=True, slots=True)
class _State:
    """Everything a decision reads, swapped as one reference so a decision never sees
    a new bundle with an old catalog or the reverse."""

    bundle: PolicyBundle
    catalog: Catalog | None
    entities: cedarpy.Entities
    catalog_version: str | None = None
    #: A candidate set evaluated beside ``bundle`` on every decision (shadow mode).
    shadow: PolicyBundle | None = None
    shadow_source: str | None = None
    #: ``entities`` plus one decision's delta (agent, call, arguments), by the delta's text:
    #: an agent repeating a call skips the copy Cedar makes of the catalog's entities. A
    #: new catalog comes with a new, empty map (see ``_DeltaCache``).
    with_delta: _DeltaCache = field(default_factory=lambda: _DeltaCache(0))
    #: The index of ``bundle`` (and of ``shadow``) that hands Cedar only the policies that
    #: can apply (:mod:`tether.policy.slicing`); None: evaluate the whole set.
    slicer: PolicySlicer | None = None
    shadow_slicer: PolicySlicer | None = None
    #: Each catalog entity's ancestors (what ``resource in …`` reads), for the slicer.
    ancestors: Mapping[Uid, frozenset[Uid]] = field(default_factory=dict)


def _tag_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _call_tags(arguments: Mapping[str, Any], canonical: Canonical) -> dict[str, str]:
    if len(arguments) > _MAX_ARGS:
        raise InvalidRequest(f"more than {_MAX_ARGS} arguments", code=ARGUMENTS_INVALID)
    tags: dict[str, str] = {}
    size = 0
    for key, value in arguments.items():
        if not isinstance(key, str) or not _ARG_KEY_RE.match(key):
            raise InvalidRequest(f"invalid argument name `{key!s:.64}`", code=ARGUMENTS_INVALID)
        if key in canonical.typed:
            # Typed: never the raw spelling. A list is only a set in `context.args`, so a
            # `like` over packed JSON text cannot span two of its elements.
            if key in canonical.scalars:
                tags[key] = canonical.scalars[key]
            continue
        try:
            tags[key] = _tag_value(value)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(
                f"argument `{key}` is not representable as JSON", code=ARGUMENTS_INVALID
            ) from exc
        size += len(key) + len(tags[key])
        if size > _MAX_ARGS_BYTES:
            raise InvalidRequest(f"arguments exceed {_MAX_ARGS_BYTES} bytes", code=ARGUMENTS_INVALID)
    return tags


def _agent_entity(principal: PolicyPrincipal) -> dict[str, Any]:
    return {
        "uid": {"type": "Tether::Agent", "id": principal.spiffe_id},
        "attrs": {"trust_domain": principal.trust_domain, "attestation": principal.attestation},
        "tags": {str(k): _tag_value(v) for k, v in principal.tags.items()},
        "parents": [],
    }


def _ancestors(entities: list[dict[str, Any]]) -> dict[Uid, frozenset[Uid]]:
    """Every entity's ancestors: the transitive closure of ``parents``, as Cedar computes it."""
    parents: dict[Uid, list[Uid]] = {
        (e["uid"]["type"], e["uid"]["id"]): [(p["type"], p["id"]) for p in e.get("parents", [])]
        for e in entities
    }
    out: dict[Uid, frozenset[Uid]] = {}
    for uid in parents:
        seen: set[Uid] = set()
        stack = list(parents[uid])
        while stack:
            p = stack.pop()
            if p not in seen:
                seen.add(p)
                stack.extend(parents.get(p, ()))
        out[uid] = frozenset(seen)
    return out


def _ancestors_of(entity: Mapping[str, Any], known: Mapping[Uid, frozenset[Uid]]) -> frozenset[Uid]:
    """The ancestors of an entity sent with the request, over the catalog's hierarchy."""
    out: set[Uid] = set()
    for p in entity.get("parents", []):
        uid = (p["type"], p["id"])
        out.add(uid)
        out.update(known.get(uid, ()))
    return frozenset(out)


def catalog_version(catalog: Catalog) -> str:
    """The version of the catalog's Cedar entities (what policy reads of resources)."""
    return "sha256:" + hashlib.sha256(catalog.entities_json().encode()).hexdigest()[:16]


def _evaluate(
    request: dict[str, Any], policy_set: cedarpy.PolicySet, entities: cedarpy.Entities, schema: cedarpy.Schema
) -> tuple[str, list[str], list[str]]:
    """Typed wrapper over cedarpy: (decision name, determining policy ids, errors)."""
    result = cedarpy.is_authorized(request, policy_set, entities, schema)
    return (
        result.decision.value,
        list(result.diagnostics.reasons),
        # Sorted: the order is the handle's, and a slice must report as the whole set does.
        sorted(str(e) for e in result.diagnostics.errors),
    )


class PolicyEngine:
    """Thread-safe: decisions read one immutable state; reloads swap it atomically."""

    def __init__(self, schema: str | None = None, *, slicing: bool = True) -> None:
        """``schema`` is Cedar schema text; the shipped schema when omitted. ``slicing``
        off evaluates the whole set on every decision (the reference the slices are
        tested against)."""
        self._schema = load_schema(schema)
        self._slicing = slicing
        self._empty_entities = cedarpy.Entities.from_json_str("[]")
        self._state = _State(empty_bundle(), None, self._empty_entities)
        self._write_lock = threading.Lock()  # serializes writers; readers never wait
        self.shadow_counters = ShadowCounters()

    @classmethod
    def from_paths(cls, policy_dir: Path, catalog: Catalog | None = None) -> PolicyEngine:
        """An engine ready to decide; raises :class:`PolicyError` on an invalid set so
        that a fresh start with bad policy refuses to start."""
        engine = cls()
        if catalog is not None:
            engine.set_catalog(catalog)
        engine.reload(policy_dir)
        return engine

    @property
    def schema(self) -> cedarpy.Schema:
        return self._schema

    @property
    def bundle(self) -> PolicyBundle:
        return self._state.bundle

    @property
    def catalog(self) -> Catalog | None:
        return self._state.catalog

    def set_catalog(self, catalog: Catalog) -> None:
        """Rebuild the base entities; on error the previous catalog stays in force."""
        try:
            text = catalog.entities_json()
            entities = cedarpy.Entities.from_json_str(text, self._schema)
        except ValueError as exc:
            raise PolicyError(
                f"catalog `{catalog.source}` does not fit the cedar schema: {exc}", code="catalog_invalid"
            ) from exc
        version = catalog_version(catalog)
        ancestors = _ancestors([r.cedar_entity() for r in catalog.resources.values()])
        with self._write_lock:
            self._state = replace(
                self._state,
                catalog=catalog,
                entities=entities,
                catalog_version=version,
                with_delta=_DeltaCache(len(text)),
                ancestors=ancestors,
            )

    def reload(self, policy_dir: Path) -> PolicyBundle:
        """Load ``policy_dir`` and put it in force; on error raise and keep the old set."""
        bundle = load_bundle(policy_dir, self._schema)
        self.set_bundle(bundle)
        return bundle

    def set_bundle(self, bundle: PolicyBundle) -> None:
        """Put an already-loaded bundle in force (e.g. one validated elsewhere)."""
        slicer = self._slicer(bundle)
        with self._write_lock:
            self._state = replace(self._state, bundle=bundle, slicer=slicer)

    def _slicer(self, bundle: PolicyBundle) -> PolicySlicer | None:
        """The bundle's index, built before the bundle goes in force; without one (slicing
        off, no policy, or an index that could not be built) the whole set is evaluated,
        which gives the same answers."""
        if not self._slicing or bundle.policy_set is None:
            return None
        if not bundle.sources:
            return None  # built from a handle, not from files (a derived set): nothing to index
        try:
            return PolicySlicer(bundle, self._schema)
        except Exception:
            log.exception("policy slicing is off for %s: the whole set is evaluated", bundle.version)
            return None

    # -- shadow mode ---------------------------------------------------------------------
    @property
    def shadow(self) -> PolicyBundle | None:
        return self._state.shadow

    @property
    def shadow_source(self) -> str | None:
        return self._state.shadow_source

    @property
    def catalog_version(self) -> str | None:
        return self._state.catalog_version

    def load_shadow(self, policy_dir: Path) -> PolicyBundle:
        """Validate ``policy_dir`` exactly as :meth:`reload` does and evaluate it beside
        the enforced set from now on; on error raise and keep the previous shadow."""
        bundle = load_bundle(policy_dir, self._schema)
        self.set_shadow(bundle, str(policy_dir))
        return bundle

    def set_shadow(self, bundle: PolicyBundle, source: str) -> None:
        """Evaluate an already-validated ``bundle`` (from ``source``) in shadow mode."""
        slicer = self._slicer(bundle)
        with self._write_lock:
            self._state = replace(self._state, shadow=bundle, shadow_source=source, shadow_slicer=slicer)
            self.shadow_counters = ShadowCounters()

    def clear_shadow(self) -> None:
        with self._write_lock:
            self._state = replace(self._state, shadow=None, shadow_source=None, shadow_slicer=None)
            self.shadow_counters = ShadowCounters()

    def decide(self, request: PolicyRequest) -> PolicyResult:
        """Never raises: every failure is a deny with a code."""
        state = self._state  # one read: the rest of the call sees one consistent state
        version = state.bundle.version
        try:
            return self._decide(state, request)
        except ArgumentRefused as exc:
            return PolicyResult(
                Outcome.DENY, (Reason("invariant", exc.message),), version, exc.code, errors=(exc.message,)
            )
        except InvalidRequest as exc:
            return PolicyResult(Outcome.DENY, (), version, exc.code, errors=(exc.message,))
        except Exception as exc:  # fail closed on anything, including bugs here
            log.exception("policy evaluation failed")
            return PolicyResult(
                Outcome.DENY, (), version, POLICY_ERROR, errors=(f"{type(exc).__name__}: {exc}",)
            )

    def _decide(self, state: _State, request: PolicyRequest) -> PolicyResult:
        bundle = state.bundle
        if bundle.policy_set is None:
            return PolicyResult(Outcome.DENY, (), bundle.version, NO_POLICY)
        resource = request.resource
        # Invariant before policy: a typed argument that cannot be made canonical, or a
        # path outside its declared roots, denies whatever the policies say.
        canonical = (
            canonicalize(resource.arguments, request.arguments)
            if request.check_arguments and request.action not in LIFECYCLE_ACTIONS
            else EMPTY
        )
        delta = [
            _agent_entity(request.principal),
            {"uid": _CALL_UID, "attrs": {}, "tags": _call_tags(request.arguments, canonical), "parents": []},
            canonical.cedar_entity(_ARGS_UID),
        ]
        if state.catalog is None or state.catalog.get(resource.id) != resource:
            # Not the catalog's entry: send it along. A same-id entry that differs makes
            # Cedar refuse the merge, which denies below.
            delta.append(resource.cedar_entity())
        # orjson for both texts Cedar parses: cedarpy would run the stdlib encoder over the
        # context dict (any valid JSON will do; neither text is hashed or stored).
        entities = state.with_delta.get(state.entities, orjson.dumps(delta).decode())
        context = dict(request.context)
        context["call"] = {"__entity": _CALL_UID}  # always ours, never the caller's
        context["args"] = {"__entity": _ARGS_UID}
        cedar_request = {
            "principal": {"type": "Tether::Agent", "id": request.principal.spiffe_id},
            "action": {"type": "Tether::Action", "id": request.action},
            "resource": resource.cedar_uid,
            "context": orjson.dumps(context).decode(),
        }
        slices = _Slices(state, request, delta[3] if len(delta) > 3 else None, context)
        result = decide_bundle(bundle, cedar_request, entities, self._schema, slices.get(state.slicer))
        # The record of what Cedar saw: references to the parts built above, no copies
        # (the audit writer serializes it once). Args attributes are derived from the
        # typed tags, so they are not stored twice.
        agent = delta[0]
        record: dict[str, Any] = {
            "principal": {
                "id": request.principal.spiffe_id,
                "trust_domain": agent["attrs"]["trust_domain"],
                "attestation": agent["attrs"]["attestation"],
                "tags": agent["tags"],
            },
            "action": request.action,
            "resource": resource.cedar_uid,
            "catalog": state.catalog_version,
            "context": request.context,
            "call": delta[1]["tags"],
            "args": canonical.typed,
        }
        if len(delta) > 3:
            record["resource_entity"] = delta[3]
        shadow = None
        if state.shadow is not None:
            shadow = _shadow(state.shadow, cedar_request, entities, self._schema, slices, state.shadow_slicer)
        return replace(result, arguments=canonical, input=record, shadow=shadow)


class _Slices:
    """What a slicer reads of one request, worked out once for the enforced and the shadow set."""

    __slots__ = ("_ancestors", "_context", "_request", "_resource")

    def __init__(
        self,
        state: _State,
        request: PolicyRequest,
        resource_entity: Mapping[str, Any] | None,
        context: Mapping[str, Any],
    ) -> None:
        self._request = request
        self._context = context
        self._resource: Uid = (request.resource.cedar_uid["type"], request.resource.id)
        known = state.ancestors.get(self._resource) if resource_entity is None else None
        if known is None:
            # Not the catalog's entry: its ancestors are those of the entity sent along.
            entity = resource_entity if resource_entity is not None else request.resource.cedar_entity()
            known = _ancestors_of(entity, state.ancestors)
        self._ancestors = known

    def get(self, slicer: PolicySlicer | None) -> Slice | None:
        if slicer is None:
            return None
        request = self._request
        principal = ("Tether::Agent", request.principal.spiffe_id)
        return slicer.slice_for(principal, request.action, self._resource, self._ancestors, self._context)


def decide_bundle(
    bundle: PolicyBundle,
    cedar_request: dict[str, Any],
    entities: cedarpy.Entities,
    schema: cedarpy.Schema,
    sliced: Slice | None = None,
) -> PolicyResult:
    """One decision of ``bundle`` over a built request: what the engine and replay share.

    ``sliced``: the part of ``bundle`` that can apply to this request
    (:mod:`tether.policy.slicing`); it answers as the whole set does."""
    if bundle.policy_set is None:
        return PolicyResult(Outcome.DENY, (), bundle.version, NO_POLICY)
    policy_set = bundle.policy_set if sliced is None else sliced.policy_set
    without_approvals = bundle.without_approvals if sliced is None else sliced.without_approvals
    decision, determining, errors = _evaluate(cedar_request, policy_set, entities, schema)
    result = interpret(bundle, decision, determining, errors)
    if result.outcome is Outcome.APPROVAL_REQUIRED and without_approvals is not None:
        # Ask a human only when their yes would allow: without the @approval forbids
        # the request must pass, or the honest answer is the deny that remains.
        decision, determining, errors = _evaluate(cedar_request, without_approvals, entities, schema)
        if errors or decision != "Allow":
            # No other forbid matched the first time, so this deny is a missing permit.
            return PolicyResult(
                Outcome.DENY,
                result.reasons,
                bundle.version,
                POLICY_ERROR if errors else NO_PERMIT,
                errors=tuple(errors),
            )
    return result


def _shadow(
    bundle: PolicyBundle,
    cedar_request: dict[str, Any],
    entities: cedarpy.Entities,
    schema: cedarpy.Schema,
    slices: _Slices,
    slicer: PolicySlicer | None,
) -> ShadowResult:
    """The shadow set's answer; never raises, so it cannot change the enforced decision."""
    try:
        r = decide_bundle(bundle, cedar_request, entities, schema, slices.get(slicer))
    except Exception as exc:  # a shadow failure is recorded, never enforced
        return ShadowResult(None, (), bundle.version, POLICY_ERROR, f"{type(exc).__name__}: {exc}")
    if r.code == POLICY_ERROR:
        return ShadowResult(None, r.reasons, bundle.version, r.code, "; ".join(r.errors) or "policy error")
    return ShadowResult(r.outcome, r.reasons, r.policy_version, r.code)


def interpret(bundle: PolicyBundle, decision: str, determining: list[str], errors: list[str]) -> PolicyResult:
    version = bundle.version
    if errors or decision not in ("Allow", "Deny"):
        return PolicyResult(Outcome.DENY, (), version, POLICY_ERROR, errors=tuple(errors))
    infos = sorted(
        (bundle.policies[p] for p in determining if p in bundle.policies), key=lambda i: (i.file, i.line)
    )
    reasons = tuple(Reason(i.policy_id, i.message) for i in infos)
    if len(infos) != len(determining):  # a reason Cedar names but the bundle does not
        return PolicyResult(
            Outcome.DENY, reasons, version, POLICY_ERROR, errors=("unknown determining policy",)
        )
    if decision == "Allow":
        return PolicyResult(Outcome.ALLOW, reasons, version)
    if not infos:
        return PolicyResult(Outcome.DENY, (), version, NO_PERMIT)
    if all(i.approval for i in infos):
        why = "; ".join(dict.fromkeys(i.approval for i in infos if i.approval))
        return PolicyResult(
            Outcome.APPROVAL_REQUIRED, reasons, version, APPROVAL_REQUIRED, approval_reason=why
        )
    return PolicyResult(Outcome.DENY, reasons, version, POLICY_FORBID)

"""Replay: decide recorded decisions again with a candidate policy set, report the flips.

A decision event of schema v3 carries what Cedar saw (``payload.input``, see
:mod:`tether.policy.engine`). :class:`Replayer` rebuilds the Cedar request from it — the
agent entity, the ``Call`` and ``Args`` entities, the context — against a candidate
bundle and catalog, and compares the outcome with the recorded one. Pure: events come in
as plain mappings, nothing is written anywhere.

Speed: Cedar is asked once per distinct request *as the candidate can see it* (the key
of :mod:`tether.policy.replay_view`); a decision whose key was answered before takes that
answer. The requests Cedar is asked about carry the catalog's entities plus their agent,
``Call`` and ``Args``, as in the live engine; handles are cached by that delta, and the
requests of a batch that share one go to ``cedarpy.is_authorized_batch`` together. (One
handle holding many decisions' entities under distinct ids was measured slower: cedarpy's
per-request cost grows with the size of the entity set.)

Masked values (``{"$masked": type, "digest": …}``) are resolved against the literals of
the candidate policies: a digest equal to a literal's (same salt) means the value was
that literal, so equality — and every other test — on it replays exactly. An unresolved
one becomes a text no literal can equal; the decision is then counted as *inexact*
(``like``, ``contains`` or ordering over that value may differ from the live decision).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cedarpy
import orjson

from tether.audit.event import REPLAYABLE_VERSION
from tether.audit.masking import TYPED_MASK_KEY, is_typed_mask, mask_digest
from tether.catalog import Catalog
from tether.model import Outcome
from tether.policy.drift import cold_drift
from tether.policy.engine import NO_PERMIT, POLICY_ERROR, PolicyResult, catalog_version, interpret
from tether.policy.loader import PolicyBundle
from tether.policy.replay_view import View
from tether.policy.shadow import flip_kind

__all__ = ["Recorded", "ReplayReport", "Replayer", "recorded_from_event"]

#: Records decided together. Small on purpose: a batch's parsed events are alive until
#: it is noted, and 512 of them (some 4 MB of objects) made every decision about twice as
#: slow as 16 do (cache misses; measured with bench/bench_replay.py). Cedar is asked
#: only on a miss, so batching its requests matters little.
BATCH = 16
_PROGRESS_EVERY = 1024
_CACHE = 4096  # entities handles kept (one per distinct agent + arguments)
_RESULTS = 200_000  # answers kept (one per distinct request as policy can see it)
_CALL_UID = {"type": "Tether::Call", "id": "call"}
_ARGS_UID = {"type": "Tether::Args", "id": "args"}
MAX_EXAMPLES = 3  # per group
MAX_EXAMPLES_REPORT = 20
_STRING_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')
_LONG_LITERAL = re.compile(r"(?<![\w.\"])-?\d{1,18}(?![\w.])")


@dataclass(frozen=True, slots=True)
class Recorded:
    """One replayable decision as it was recorded."""

    decision_id: str
    agent: str
    intent: str
    outcome: str
    policies: tuple[str, ...]
    input: Mapping[str, Any]
    #: Some value of the input was masked (``_masked`` names a path under it).
    masked: bool = True


def recorded_from_event(
    v: int, payload: Mapping[str, Any], decision_id: str | None, agent: str | None
) -> Recorded | str:
    """The recorded decision, or why it cannot be replayed (``before_v3``, ``before_policy``)."""
    if v < REPLAYABLE_VERSION:
        return "before_v3"
    inp = payload.get("input")
    if not isinstance(inp, Mapping):
        # Token, scope, task-state or argument refusals: decided before any policy ran.
        return "before_policy"
    ctx = inp.get("context") or {}
    task = ctx.get("task") or {}
    return Recorded(
        decision_id or "",
        agent or str(inp.get("principal", {}).get("id", "")),
        str(task.get("intent", "")),
        str(payload.get("policy_outcome") or payload.get("outcome")),
        tuple(str(r.get("policy_id")) for r in payload.get("reasons") or () if isinstance(r, Mapping)),
        inp,
        any(str(p).startswith("$.input") for p in payload.get("_masked") or ()),
    )


@dataclass
class _Group:
    count: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, kind: str, decision_id: str) -> None:
        self.count += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(decision_id)

    def absorb(self, later: _Group) -> None:
        self.count += later.count
        for k, n in later.by_kind.items():
            self.by_kind[k] = self.by_kind.get(k, 0) + n
        self.examples.extend(later.examples[: MAX_EXAMPLES - len(self.examples)])


@dataclass
class ReplayReport:
    candidate_version: str
    catalog_version: str
    decisions: int = 0
    replayed: int = 0
    not_replayable: dict[str, int] = field(default_factory=dict)
    inexact: int = 0
    catalog_changed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_policy: dict[str, _Group] = field(default_factory=lambda: defaultdict(_Group))
    by_agent_intent: dict[tuple[str, str], _Group] = field(default_factory=lambda: defaultdict(_Group))
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: Cedar evaluations asked (the other decisions were answered from the cache).
    evaluated: int = 0

    @property
    def flips(self) -> int:
        return sum(self.by_kind.values())

    def note_skip(self, why: str) -> None:
        self.decisions += 1
        self.not_replayable[why] = self.not_replayable.get(why, 0) + 1

    def absorb(self, later: ReplayReport) -> None:
        """Add the report of the decisions right after this one's: the counts add up and
        the examples are the first ones of both, as if one pass had written it."""
        self.decisions += later.decisions
        self.replayed += later.replayed
        for k, n in later.not_replayable.items():
            self.not_replayable[k] = self.not_replayable.get(k, 0) + n
        self.inexact += later.inexact
        self.catalog_changed += later.catalog_changed
        self.evaluated += later.evaluated
        for k, n in later.by_kind.items():
            self.by_kind[k] = self.by_kind.get(k, 0) + n
        for policy, g in later.by_policy.items():
            self.by_policy[policy].absorb(g)
        for who, g in later.by_agent_intent.items():
            self.by_agent_intent[who].absorb(g)
        self.examples.extend(later.examples[: MAX_EXAMPLES_REPORT - len(self.examples)])

    def to_dict(self) -> dict[str, Any]:
        def group(g: _Group) -> dict[str, Any]:
            return {"count": g.count, "by_kind": dict(sorted(g.by_kind.items())), "examples": g.examples}

        return {
            "candidate_version": self.candidate_version,
            "catalog_version": self.catalog_version,
            "decisions": self.decisions,
            "replayed": self.replayed,
            "unchanged": self.replayed - self.flips,
            "flips": self.flips,
            "not_replayable": dict(sorted(self.not_replayable.items())),
            "inexact": self.inexact,
            "catalog_changed": self.catalog_changed,
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_policy": [
                {"policy": p, **group(g)}
                for p, g in sorted(self.by_policy.items(), key=lambda kv: (-kv[1].count, kv[0]))
            ],
            "by_agent_intent": [
                {"agent": a, "intent": i, **group(g)}
                for (a, i), g in sorted(self.by_agent_intent.items(), key=lambda kv: (-kv[1].count, kv[0]))
            ],
            "examples": self.examples,
            "evaluated": self.evaluated,
            "seconds": round(self.seconds, 3),
            "rate_per_second": round(self.replayed / self.seconds) if self.seconds > 0 else None,
        }


def _literals(texts: Iterable[str]) -> tuple[list[str], list[int]]:
    """String and integer literals of the candidate policies (the values a masked digest
    can be recognised as; one found in a comment is still that value)."""
    text = "\n".join(texts)
    strings = []
    for m in _STRING_LITERAL.finditer(text):
        try:
            strings.append(json.loads(f'"{m.group(1)}"'))
        except ValueError:
            continue
    longs = [int(x) for x in _LONG_LITERAL.findall(text)]
    return strings, longs


class Replayer:
    """Decides recorded inputs with ``bundle`` over ``catalog``; reusable across batches."""

    def __init__(
        self,
        bundle: PolicyBundle,
        catalog: Catalog,
        schema: cedarpy.Schema,
        *,
        salt: bytes | None = None,
        policy_texts: Iterable[str] = (),
        view: View | None = None,
    ) -> None:
        """``salt`` is the audit digest salt (``None``: masked values stay unresolved);
        ``policy_texts`` the candidate's Cedar sources, searched for literals; ``view``
        what of an input the answer cache keys on (default: what ``bundle`` can see;
        :meth:`View.whole` asks Cedar once per distinct input)."""
        self.bundle = bundle
        self.catalog = catalog
        self.schema = schema
        self.catalog_version = catalog_version(catalog)
        self._base = cedarpy.Entities.from_json_str(catalog.entities_json(), schema)
        self._known: dict[str, Any] = {}
        self._cache: dict[str, cedarpy.Entities] = {}
        #: Answers by the input as the candidate can see it (with: a masked value stayed unresolved).
        self._results: dict[str, tuple[PolicyResult, bool]] = {}
        self.view = view if view is not None else View.of(bundle.sources.values())
        #: Tag keys a policy can read; None when some tag key is computed, not a literal.
        self._tag_names = self.view.tag_names
        strings, longs = _literals(policy_texts)
        if salt is not None:
            for lit in (*strings, *longs, True, False):
                self._known[mask_digest(salt, lit)] = lit
        #: Cedar evaluations asked (the rest were answered from the cache).
        self.evaluated = 0

    # -- rebuilding one request ----------------------------------------------------------
    def _unmask(self, value: Any, flags: list[bool]) -> Any:
        if is_typed_mask(value):
            known = self._known.get(value["digest"], _MISSING)
            kind = value[TYPED_MASK_KEY]
            if known is not _MISSING and (kind == "Bool") == isinstance(known, bool):
                return known
            flags.append(True)
            digest = str(value["digest"]).rpartition(":")[2]
            if kind == "Long":
                return int(digest[:12], 16)
            if kind == "Bool":
                return False
            return f"[masked:{digest[:16]}]"
        if isinstance(value, dict):
            return {k: self._unmask(v, flags) for k, v in value.items()}
        if isinstance(value, list):
            return [self._unmask(v, flags) for v in value]
        return value

    def _build(self, inp: Mapping[str, Any], masked: bool) -> tuple[str, dict[str, Any], bool] | None:
        """(entities delta JSON, Cedar request, a masked value stayed unresolved) of one
        record, or None when its resource is unknown to the catalog."""
        flags: list[bool] = []
        names = self._tag_names
        if names is not None:
            # Tags no candidate policy can name are invisible to it: leave them out, so
            # calls that differ only there share one entities handle.
            inp = dict(inp)
            inp["call"] = {k: v for k, v in inp["call"].items() if k in names}
            p = inp["principal"]
            inp["principal"] = {**p, "tags": {k: v for k, v in p["tags"].items() if k in names}}
        if masked:
            inp = self._unmask(inp, flags)
        resource = inp["resource"]
        entity = inp.get("resource_entity")
        if entity is None and self.catalog.get(str(resource["id"])) is None:
            return None
        p = inp["principal"]
        agent_uid = {"type": "Tether::Agent", "id": p["id"]}
        paths: set[str] = set()
        hosts: set[str] = set()
        under: set[str] | None = None
        # The Args attributes come from every typed argument, named by a policy or not.
        typed: Mapping[str, Any] = inp["args"]
        for arg in typed.values():
            hosts.update(arg.get("hosts", ()))
            if arg.get("kind") == "path":
                paths.update(arg.get("values", ()))
                u = set(arg.get("under", ()))
                under = u if under is None else under & u
        # The same three (or four) entities the live engine adds, under the same ids.
        delta: list[Any] = [
            {
                "uid": agent_uid,
                "attrs": {"trust_domain": p["trust_domain"], "attestation": p["attestation"]},
                "tags": p["tags"],
                "parents": [],
            },
            {"uid": _CALL_UID, "attrs": {}, "tags": inp["call"], "parents": []},
            {
                "uid": _ARGS_UID,
                "attrs": {"paths": sorted(paths), "under": sorted(under or ()), "hosts": sorted(hosts)},
                "tags": typed if names is None else {k: v for k, v in typed.items() if k in names},
                "parents": [],
            },
        ]
        if entity is not None:
            delta.append(entity)
        text = orjson.dumps(delta, option=orjson.OPT_SORT_KEYS).decode()
        context = dict(inp["context"])
        risk = context.get("risk")
        if isinstance(risk, dict) and "drift" not in risk:
            # Recorded before the drift signal existed: policy then saw no baseline at all.
            context["risk"] = {**risk, "drift": cold_drift()}
        context["call"] = {"__entity": _CALL_UID}
        context["args"] = {"__entity": _ARGS_UID}
        request = {
            "principal": agent_uid,
            "action": {"type": "Tether::Action", "id": inp["action"]},
            "resource": resource,
            "context": context,
        }
        return text, request, bool(flags)

    def _entities(self, key: str, delta: str) -> cedarpy.Entities:
        handle = self._cache.get(key)
        if handle is None:
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            # As the live engine adds its delta: without the schema (which also makes
            # every later evaluation over the handle several times faster in cedarpy).
            handle = self._cache[key] = self._base.with_added_json_str(delta)
        return handle

    # -- deciding ------------------------------------------------------------------------
    def _decide_batch(self, requests: list[dict[str, Any]], key: str, delta: str) -> list[PolicyResult]:
        bundle = self.bundle
        if bundle.policy_set is None:
            return [PolicyResult(Outcome.DENY, (), bundle.version, "no_policy") for _ in requests]
        try:
            entities = self._entities(key, delta)
            answers = cedarpy.is_authorized_batch(requests, bundle.policy_set, entities, self.schema)
        except (ValueError, RuntimeError) as exc:
            # The live engine denies when Cedar refuses its input; so does replay.
            return [
                PolicyResult(Outcome.DENY, (), bundle.version, POLICY_ERROR, errors=(str(exc),))
                for _ in requests
            ]
        results = [
            interpret(
                bundle,
                a.decision.value,
                list(a.diagnostics.reasons),
                [str(e) for e in a.diagnostics.errors],
            )
            for a in answers
        ]
        ask = [i for i, r in enumerate(results) if r.outcome is Outcome.APPROVAL_REQUIRED]
        if ask and bundle.without_approvals is not None:
            # As the engine does: a human is asked only when their yes would allow.
            second = cedarpy.is_authorized_batch(
                [requests[i] for i in ask], bundle.without_approvals, entities, self.schema
            )
            for i, a in zip(ask, second, strict=True):
                if a.diagnostics.errors or a.decision.value != "Allow":
                    code = POLICY_ERROR if a.diagnostics.errors else NO_PERMIT
                    results[i] = PolicyResult(Outcome.DENY, results[i].reasons, bundle.version, code)
        return results

    def replay(
        self,
        records: Iterable[Recorded | str],
        report: ReplayReport | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ReplayReport:
        """Replay ``records`` (a ``str`` is a skipped event and why) into ``report``."""
        out = report or ReplayReport(self.bundle.version, self.catalog_version)
        batch: list[Recorded] = []
        done = 0
        for rec in records:
            if isinstance(rec, str):
                out.note_skip(rec)
                done += 1  # the bar counts every decision event of the window
                continue
            batch.append(rec)
            if len(batch) >= BATCH:
                self._run(batch, out)
                done += len(batch)
                batch = []
                if progress and done >= _PROGRESS_EVERY:
                    progress(done)
                    done = 0
        if batch:
            self._run(batch, out)
            done += len(batch)
        if progress and done:
            progress(done)
        return out

    def _run(self, batch: list[Recorded], out: ReplayReport) -> None:
        """Decide ``batch``: a request already answered (as the candidate can see it, see
        :mod:`tether.policy.replay_view`) is not asked again; the others go to Cedar
        grouped by their entities; notes are taken in record order."""
        if len(self._results) > _RESULTS:
            self._results.clear()
        results = self._results
        groups: dict[str, tuple[list[str], list[dict[str, Any]], list[bool]]] = {}
        keys: list[str | None] = []
        key_of = self.view.key
        for rec in batch:
            try:
                key: str | None = key_of(rec.input)
            except (KeyError, TypeError, AttributeError):
                key = None  # reported as malformed
            keys.append(key)
            if key is None or key in results:
                continue
            try:
                built = self._build(rec.input, rec.masked)
            except (KeyError, TypeError, AttributeError):
                keys[-1] = None
                continue
            if built is None:
                results[key] = (
                    PolicyResult(Outcome.DENY, (), self.bundle.version, "unknown_resource"),
                    False,
                )
                continue
            delta, request, unresolved = built
            # Held until decided below, so a later record of this batch with the same key
            # is not built again.
            results[key] = (_PENDING, unresolved)
            group = groups.setdefault(delta, ([], [], []))
            group[0].append(key)
            group[1].append(request)
            group[2].append(unresolved)
        for delta, (gkeys, requests, flags) in groups.items():
            decided = self._decide_batch(requests, delta, delta)
            self.evaluated += len(requests)
            out.evaluated += len(requests)
            for key, result, unresolved in zip(gkeys, decided, flags, strict=True):
                results[key] = (result, unresolved)
        for rec, key in zip(batch, keys, strict=True):
            if key is None:
                out.note_skip("malformed_input")
            else:
                result, unresolved = results[key]
                self._note(out, rec, result, unresolved)

    def _note(self, out: ReplayReport, rec: Recorded, result: PolicyResult, inexact: bool) -> None:
        out.decisions += 1
        out.replayed += 1
        out.inexact += inexact
        if rec.input.get("catalog") != self.catalog_version:
            out.catalog_changed += 1
        after = result.outcome.value
        if after == rec.outcome:
            return
        kind = flip_kind(rec.outcome, after)
        out.by_kind[kind] = out.by_kind.get(kind, 0) + 1
        now = tuple(r.policy_id for r in result.reasons) or ((result.code,) if result.code else ())
        changed = sorted(set(rec.policies) ^ set(now)) or sorted(set(rec.policies) | set(now))
        for policy_id in changed or ["(none)"]:
            out.by_policy[policy_id].add(kind, rec.decision_id)
        out.by_agent_intent[(rec.agent, rec.intent)].add(kind, rec.decision_id)
        if len(out.examples) < MAX_EXAMPLES_REPORT:
            out.examples.append(
                {
                    "decision_id": rec.decision_id,
                    "kind": kind,
                    "agent": rec.agent,
                    "intent": rec.intent,
                    "action": rec.input.get("action"),
                    "resource": rec.input.get("resource", {}).get("id"),
                    "recorded": {"outcome": rec.outcome, "policies": list(rec.policies)},
                    "candidate": {"outcome": after, "policies": list(now)},
                    **({"inexact": True} if inexact else {}),
                }
            )


_MISSING = object()
_PENDING = PolicyResult(Outcome.DENY, (), "", "pending")

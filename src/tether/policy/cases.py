"""Policy tests as data: YAML cases of request → expected decision.

A case file is a mapping with an optional ``defaults`` section (merged into every case;
``context`` deeply) and a ``cases`` list; a bare list of cases is accepted too::

    defaults:
      principal: spiffe://support.example/agent/triage
      context: {environment: prod, task: {intent: support.triage}}
    cases:
      - name: triage reads tickets
        action: read
        resource: tickets                  # a catalog id
        arguments: {ticket_id: T-1}        # optional: tags of context.call
        context: {risk: {max_sensitivity_read: 2}}
        expect: allow                      # allow | deny | approval_required
        reasons: [triage-read]             # optional: policy ids that must be among the reasons

``principal`` is a SPIFFE ID or ``{id, tags, attestation}``. Contexts are built by
:func:`tether.policy.context.context_from_mapping`, the same builders the broker uses.

A malformed file raises :class:`PolicyError` (code ``cases_invalid``) naming the file
and the case index; a case that runs but disagrees is a failed :class:`CaseResult`.
The ``tether policy test`` command is meant to be ``run_cases`` plus printing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tether.catalog import Catalog
from tether.errors import InvalidRequest, PolicyError
from tether.model import Outcome
from tether.policy.context import context_from_mapping
from tether.policy.engine import PolicyEngine, PolicyPrincipal, PolicyRequest, PolicyResult

__all__ = ["CaseReport", "CaseResult", "PolicyCase", "evaluate_cases", "load_cases", "run_cases"]

_CODE = "cases_invalid"
_CASE_FIELDS = frozenset(
    {"name", "principal", "action", "resource", "arguments", "context", "expect", "reasons"}
)
_DEFAULT_FIELDS = frozenset({"principal", "action", "resource", "arguments", "context"})
_DEFAULT_ATTESTATION = "jwt-svid"


@dataclass(frozen=True, slots=True)
class PolicyCase:
    file: str
    index: int  # 0-based position in the file's case list
    name: str
    principal: PolicyPrincipal
    action: str
    resource: str  # catalog id, resolved when the case runs
    context: Mapping[str, Any]
    expect: Outcome
    arguments: Mapping[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.file} case {self.index}"


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    result: PolicyResult
    passed: bool
    missing_reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for a terminal: ``ok`` or ``FAIL`` with expected vs got."""
        head = f"{self.case.where} `{self.case.name}`"
        if self.passed:
            return f"ok   {head}"
        got_ids = ", ".join(r.policy_id for r in self.result.reasons) or "none"
        detail = (
            f"expected `{self.case.expect}`, got `{self.result.outcome}`"
            f" (code `{self.result.code}`, reasons: {got_ids})"
        )
        if self.missing_reasons:
            detail += f"; missing reasons: {', '.join(self.missing_reasons)}"
        return f"FAIL {head}: {detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.case.file,
            "index": self.case.index,
            "name": self.case.name,
            "passed": self.passed,
            "expected": self.case.expect.value,
            "expected_reasons": list(self.case.reasons),
            "got": self.result.outcome.value,
            "code": self.result.code,
            "reasons": [r.to_dict() for r in self.result.reasons],
            "missing_reasons": list(self.missing_reasons),
            "errors": list(self.result.errors),
        }


@dataclass(frozen=True, slots=True)
class CaseReport:
    policy_version: str
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def summary(self) -> str:
        failed = len(self.failures)
        return f"{len(self.results) - failed} passed, {failed} failed (policy `{self.policy_version}`)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
        }


def _invalid(where: str, detail: str, **extra: Any) -> PolicyError:
    return PolicyError(f"{where}: {detail}", code=_CODE, **extra)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _principal(raw: Any, where: str) -> PolicyPrincipal:
    if isinstance(raw, str):
        raw = {"id": raw}
    if not isinstance(raw, Mapping):
        raise _invalid(where, "`principal` must be a SPIFFE ID or a mapping")
    unknown = sorted(set(raw) - {"id", "tags", "attestation"})
    if unknown:
        raise _invalid(where, f"unknown field `principal.{unknown[0]}`")
    spiffe_id = raw.get("id")
    if not isinstance(spiffe_id, str) or not spiffe_id.startswith("spiffe://"):
        raise _invalid(where, f"`principal.id` must be a SPIFFE ID, got `{spiffe_id}`")
    trust_domain = spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
    if not trust_domain:
        raise _invalid(where, f"`principal.id` has no trust domain: `{spiffe_id}`")
    tags = raw.get("tags") or {}
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise _invalid(where, "`principal.tags` must map strings to strings")
    attestation = raw.get("attestation", _DEFAULT_ATTESTATION)
    if not isinstance(attestation, str):
        raise _invalid(where, "`principal.attestation` must be a string")
    return PolicyPrincipal(spiffe_id, trust_domain, attestation, dict(tags))


def _case(raw: Any, defaults: Mapping[str, Any], file: str, index: int) -> PolicyCase:
    where = f"{file} case {index}"
    if not isinstance(raw, Mapping):
        raise _invalid(where, "a case must be a mapping", file=file, case=index)
    unknown = sorted(set(raw) - _CASE_FIELDS)
    if unknown:
        raise _invalid(where, f"unknown field `{unknown[0]}`", file=file, case=index)
    # Only the context merges deeply: a case's arguments or principal replace the
    # defaults whole, so a case can drop an argument the defaults set.
    base_context, case_context = defaults.get("context") or {}, raw.get("context") or {}
    if not isinstance(base_context, Mapping) or not isinstance(case_context, Mapping):
        raise _invalid(where, "`context` must be a mapping", file=file, case=index)
    merged = {**defaults, **raw, "context": _merge(base_context, case_context)}
    for key in ("name", "principal", "action", "resource", "expect"):
        if key not in merged:
            raise _invalid(where, f"missing field `{key}`", file=file, case=index)
    name, action, resource = merged["name"], merged["action"], merged["resource"]
    for key, value in (("name", name), ("action", action), ("resource", resource)):
        if not isinstance(value, str) or not value:
            raise _invalid(where, f"`{key}` must be a non-empty string", file=file, case=index)
    try:
        expect = Outcome(merged["expect"])
    except ValueError:
        raise _invalid(
            where,
            f"`expect` must be allow, deny or approval_required, got `{merged['expect']}`",
            file=file,
            case=index,
        ) from None
    reasons = merged.get("reasons") or []
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise _invalid(where, "`reasons` must be a list of policy ids", file=file, case=index)
    arguments = merged.get("arguments") or {}
    if not isinstance(arguments, Mapping):
        raise _invalid(where, "`arguments` must be a mapping", file=file, case=index)
    try:
        context = context_from_mapping(action, merged["context"])
    except (InvalidRequest, TypeError) as exc:
        detail = exc.message if isinstance(exc, InvalidRequest) else str(exc)
        raise _invalid(where, f"context: {detail}", file=file, case=index) from exc
    try:
        principal = _principal(merged["principal"], where)
    except PolicyError as exc:
        exc.details.update(file=file, case=index)
        raise
    return PolicyCase(
        file, index, name, principal, action, resource, context, expect, dict(arguments), tuple(reasons)
    )


def _case_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
    if path.is_file():
        return [path]
    raise _invalid(str(path), "no such file or directory", file=str(path), case=None)


def _load_file(path: Path) -> list[PolicyCase]:
    file = path.name
    try:
        doc = yaml.safe_load(path.read_text("utf-8"))
    except OSError as exc:
        raise _invalid(file, f"cannot read it: {exc.strerror}", file=file, case=None) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise _invalid(
            file if line is None else f"{file} line {line}", "not valid YAML", file=file, case=None, line=line
        ) from exc
    defaults: Mapping[str, Any] = {}
    if isinstance(doc, Mapping):
        unknown = sorted(set(doc) - {"defaults", "cases"})
        if unknown:
            raise _invalid(file, f"unknown section `{unknown[0]}`", file=file, case=None)
        defaults = doc.get("defaults") or {}
        if not isinstance(defaults, Mapping) or set(defaults) - _DEFAULT_FIELDS:
            raise _invalid(
                file,
                "`defaults` may set principal, action, resource, arguments and context",
                file=file,
                case=None,
            )
        doc = doc.get("cases")
    if doc is None:
        return []
    if not isinstance(doc, Sequence) or isinstance(doc, str):
        raise _invalid(file, "`cases` must be a list", file=file, case=None)
    return [_case(raw, defaults, file, i) for i, raw in enumerate(doc)]


def load_cases(path: Path) -> tuple[PolicyCase, ...]:
    """Cases from one YAML file, or every ``*.yaml``/``*.yml`` of a directory (sorted)."""
    return tuple(case for p in _case_files(path) for case in _load_file(p))


def evaluate_cases(engine: PolicyEngine, catalog: Catalog, cases: Sequence[PolicyCase]) -> CaseReport:
    """Run ``cases`` against ``engine``; a case naming an unknown resource is malformed."""
    results: list[CaseResult] = []
    for case in cases:
        resource = catalog.get(case.resource)
        if resource is None:
            raise _invalid(case.where, f"unknown resource `{case.resource}`", file=case.file, case=case.index)
        result = engine.decide(
            PolicyRequest(case.principal, case.action, resource, case.context, case.arguments)
        )
        got_ids = {r.policy_id for r in result.reasons}
        missing = tuple(r for r in case.reasons if r not in got_ids)
        results.append(CaseResult(case, result, result.outcome is case.expect and not missing, missing))
    return CaseReport(engine.bundle.version, tuple(results))


def run_cases(policy_dir: Path, catalog: Catalog, cases_path: Path) -> CaseReport:
    """Load ``policy_dir`` (raising ``policy_invalid`` if it is refused) and run every
    case of ``cases_path`` (a file or a directory) against it with ``catalog``."""
    engine = PolicyEngine.from_paths(policy_dir, catalog)
    return evaluate_cases(engine, catalog, load_cases(cases_path))

"""Policy tests as data: the shipped example cases, reports, malformed case files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tether.catalog import Catalog
from tether.errors import PolicyError
from tether.model import Outcome
from tether.policy import PolicyEngine, evaluate_cases, load_cases, run_cases

from .conftest import EXAMPLES

Write = Callable[[dict[str, str]], Path]

PERMIT_READ = '@id("read")\npermit (principal, action == Tether::Action::"read", resource);\n'


def test_shipped_example_cases_pass(example_catalog: Catalog) -> None:
    """Every shipped example case agrees with the shipped example policies."""
    report = run_cases(EXAMPLES / "policies", example_catalog, EXAMPLES / "policy_tests")
    assert [r.describe() for r in report.failures] == []
    assert report.passed and len(report.results) >= 30


def test_every_shipped_policy_is_exercised(example_catalog: Catalog) -> None:
    """Each shipped policy is a determining reason in at least one shipped case."""
    engine = PolicyEngine.from_paths(EXAMPLES / "policies", example_catalog)
    report = evaluate_cases(engine, example_catalog, load_cases(EXAMPLES / "policy_tests"))
    hit = {reason.policy_id for r in report.results for reason in r.result.reasons}
    assert {info.policy_id for info in engine.bundle.policies.values()} <= hit


def test_shipped_cases_cover_every_outcome(example_catalog: Catalog) -> None:
    """The shipped cases expect allow, deny and approval_required at least once each."""
    expected = {case.expect for case in load_cases(EXAMPLES / "policy_tests")}
    assert expected == set(Outcome)


def cases_file(tmp_path: Path, text: str, name: str = "cases.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_disagreeing_case_is_a_failure_not_an_error(
    tmp_path: Path, write_policies: Write, catalog: Catalog
) -> None:
    """A case whose outcome differs is reported with expected and got values."""
    path = cases_file(
        tmp_path,
        """
cases:
  - name: reads pass
    principal: spiffe://support.example/a
    action: read
    resource: tickets
    context: {environment: prod, task: {intent: support.triage}}
    expect: allow
  - name: wrongly expects a deny
    principal: spiffe://support.example/a
    action: read
    resource: tickets
    context: {environment: prod, task: {intent: support.triage}}
    expect: deny
""",
    )
    report = run_cases(write_policies({"p.cedar": PERMIT_READ}), catalog, path)
    assert not report.passed
    [failure] = report.failures
    assert (failure.case.index, failure.case.expect, failure.result.outcome) == (
        1,
        Outcome.DENY,
        Outcome.ALLOW,
    )
    assert failure.to_dict()["got"] == "allow" and failure.describe().startswith("FAIL")


def test_missing_expected_reason_fails_the_case(
    tmp_path: Path, write_policies: Write, catalog: Catalog
) -> None:
    """Listed reasons must all be among the decision's reasons."""
    path = cases_file(
        tmp_path,
        """
- name: right outcome, wrong reason
  principal: spiffe://support.example/a
  action: read
  resource: tickets
  context: {environment: prod, task: {intent: support.triage}}
  expect: allow
  reasons: [read, something-else]
""",
    )
    [result] = run_cases(write_policies({"p.cedar": PERMIT_READ}), catalog, path).results
    assert not result.passed and result.missing_reasons == ("something-else",)


def test_defaults_merge_context_deeply_and_replace_arguments(tmp_path: Path) -> None:
    """defaults.context merges field by field; a case's arguments replace the defaults'."""
    path = cases_file(
        tmp_path,
        """
defaults:
  principal: {id: spiffe://support.example/a, tags: {team: support}}
  arguments: {a: "1", b: "2"}
  context: {environment: prod, task: {intent: support.triage, depth: 1}}
cases:
  - {name: n, action: read, resource: tickets, arguments: {b: "3"}, context: {task: {id: t-9}}, expect: deny}
""",
    )
    [case] = load_cases(path)
    assert case.arguments == {"b": "3"}
    assert case.context["task"]["depth"] == 1 and case.context["task"]["id"] == "t-9"
    assert case.principal.trust_domain == "support.example" and case.principal.tags == {"team": "support"}


GOOD_CASE: dict[str, Any] = {
    "name": "n",
    "principal": "spiffe://td/a",
    "action": "read",
    "resource": "tickets",
    "expect": "allow",
    "context": {"environment": "prod", "task": {"intent": "x"}},
}


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD_CASE.items() if k != key}


BAD_CASES: dict[str, object] = {
    "unknown case field": {**GOOD_CASE, "expects": "deny"},
    "missing expect": _without("expect"),
    "bad expect": {**GOOD_CASE, "expect": "maybe"},
    "no environment": {**GOOD_CASE, "context": {"task": {"intent": "x"}}},
    "no intent": {**GOOD_CASE, "context": {"environment": "prod"}},
    "unknown context field": {**GOOD_CASE, "context": {**GOOD_CASE["context"], "risky": {}}},
    "wrong context type": {
        **GOOD_CASE,
        "context": {"environment": "prod", "task": {"intent": "x", "depth": "deep"}},
    },
    "not a spiffe id": {**GOOD_CASE, "principal": "alice"},
    "case not a mapping": "just a string",
}


@pytest.mark.parametrize("bad", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_malformed_case_names_file_and_index(tmp_path: Path, bad: object) -> None:
    """A malformed case is refused with code cases_invalid, its file and its index."""
    path = cases_file(tmp_path, yaml.safe_dump([GOOD_CASE, bad]), "broken.yaml")
    with pytest.raises(PolicyError) as info:
        load_cases(path)
    assert info.value.code == "cases_invalid"
    assert (info.value.details["file"], info.value.details["case"]) == ("broken.yaml", 1)
    assert "broken.yaml case 1" in info.value.message


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error is refused with the file and the line."""
    path = cases_file(tmp_path, "cases:\n  - name: x\n    action: [read\n", "syntax.yaml")
    with pytest.raises(PolicyError) as info:
        load_cases(path)
    assert info.value.code == "cases_invalid" and info.value.details["file"] == "syntax.yaml"
    assert info.value.details["line"] is not None


def test_unknown_resource_is_malformed(tmp_path: Path, write_policies: Write, catalog: Catalog) -> None:
    """A case naming a resource missing from the catalog is refused, not failed."""
    path = cases_file(
        tmp_path,
        "- {name: n, principal: spiffe://td/a, action: read, resource: nope, "
        "expect: deny, context: {environment: prod, task: {intent: x}}}\n",
    )
    with pytest.raises(PolicyError) as info:
        run_cases(write_policies({"p.cedar": PERMIT_READ}), catalog, path)
    assert (info.value.code, info.value.details["case"]) == ("cases_invalid", 0)


def test_invalid_policy_dir_raises_policy_invalid(
    tmp_path: Path, write_policies: Write, catalog: Catalog
) -> None:
    """run_cases refuses an invalid policy set with policy_invalid before running cases."""
    with pytest.raises(PolicyError) as info:
        run_cases(write_policies({"p.cedar": "permit ("}), catalog, cases_file(tmp_path, "[]"))
    assert info.value.code == "policy_invalid"


def test_missing_cases_path_is_refused(tmp_path: Path) -> None:
    """A cases path that does not exist is an error, not zero cases."""
    with pytest.raises(PolicyError) as info:
        load_cases(tmp_path / "absent.yaml")
    assert info.value.code == "cases_invalid"

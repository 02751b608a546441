"""Policy analysis: each warning kind names its file, line and column; --strict refuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cedarpy
import pytest
from click.testing import CliRunner

from tether.catalog import Catalog
from tether.cli import main
from tether.errors import PolicyError
from tether.policy import load_bundle, load_schema
from tether.policy.analysis import KINDS, PolicyWarning, analyze, load_checked

from .conftest import EXAMPLES

Write = Callable[[dict[str, str]], Path]

BASE = """@id("read-tickets")
@reason("tickets are internal")
permit (principal, action in Tether::Action::"reads", resource in Tether::Service::"tickets");
"""


@pytest.fixture(scope="module")
def schema() -> cedarpy.Schema:
    return load_schema()


def warnings(directory: Path, schema: cedarpy.Schema, catalog: Catalog | None) -> list[PolicyWarning]:
    return list(analyze(load_bundle(directory, schema), schema, catalog).warnings)


def only(found: list[PolicyWarning], kind: str) -> PolicyWarning:
    assert [w.kind for w in found] == [kind], [w.describe() for w in found]
    return found[0]


def test_shipped_examples_have_no_warnings(schema: cedarpy.Schema, example_catalog: Catalog) -> None:
    """The shipped policies analyze clean against the shipped catalog."""
    assert warnings(EXAMPLES / "policies", schema, example_catalog) == []


def test_misspelt_tool_is_an_unknown_entity(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """`Tool::"emial.send"` validates but is not in the catalog: warned at its column, with a hint."""
    text = BASE + (
        '\n@id("reply")\n@reason("triage replies")\n'
        'permit (principal, action == Tether::Action::"send",\n'
        '        resource == Tether::Tool::"emial.send");\n'
    )
    w = only(warnings(write_policies({"10-reply.cedar": text}), schema, example_catalog), "unknown_entity")
    assert (w.file, w.line, w.column, w.policy_id) == ("10-reply.cedar", 8, 21, "reply")
    assert "`email.send`" in w.message


def test_service_named_as_tool_is_an_unknown_entity(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """A catalog id used with the wrong entity type never matches either."""
    text = 'permit (principal, action, resource == Tether::Tool::"crm");\n'
    w = only(warnings(write_policies({"a.cedar": text}), schema, example_catalog), "unknown_entity")
    assert "is a service, not a tool" in w.message and (w.line, w.column) == (1, 40)


def test_group_compared_with_equals_is_an_unknown_action(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """`action == Action::"writes"` in a condition names a group that no request carries."""
    text = BASE + (
        '\n@id("no-writes")\n@reason("x")\nforbid (principal, action, resource)\n'
        'when { action == Tether::Action::"writes" && context.risk.first_use };\n'
    )
    found = warnings(write_policies({"a.cedar": text}), schema, example_catalog)
    kinds = sorted(w.kind for w in found)
    assert kinds == ["never_matches", "unknown_action"]
    w = next(w for w in found if w.kind == "unknown_action")
    assert (w.line, w.column) == (8, 18) and "action in" in w.message


def test_grant_action_typo_is_an_unknown_action(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """A `context.grant.action` string outside the action list can never be asked for."""
    text = (
        'permit (principal, action == Tether::Action::"task:open", resource)\n'
        'when { context.grant.action == "raed" };\n'
    )
    w = only(warnings(write_policies({"a.cedar": text}), schema, example_catalog), "unknown_action")
    assert (w.line, w.column) == (2, 32) and "`read`" in w.message


def test_misspelt_intent_is_warned(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """An intent label the catalog does not declare is warned where it is written."""
    text = BASE + (
        '\n@id("t")\n@reason("x")\npermit (principal, action, resource in Tether::Service::"crm")\n'
        'when { ["billing.refund", "suport.triage"].contains(context.task.intent) };\n'
    )
    w = only(warnings(write_policies({"a.cedar": text}), schema, example_catalog), "unknown_intent")
    assert (w.line, w.column) == (8, 27) and "`support.triage`" in w.message


def test_forbid_no_request_can_match(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """A forbid on an attribute value no catalog entry has is dead, warned at its keyword."""
    text = (
        BASE
        + '\n@id("dead")\n@reason("x")\nforbid (principal, action, resource)\n'
        + 'when { resource.egress == "externel" };\n'
    )
    w = only(warnings(write_policies({"a.cedar": text}), schema, example_catalog), "never_matches")
    assert (w.file, w.line, w.column, w.policy_id) == ("a.cedar", 7, 1, "dead")


def test_permit_shadowed_by_forbid(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """A permit whose every match a forbid also matches can never allow; the forbid is named."""
    text = (
        '@id("staging-reads")\n@reason("x")\n'
        'permit (principal, action in Tether::Action::"reads",\n'
        '        resource in Tether::Service::"tickets-staging")\n'
        'when { context.task.intent == "support.triage" };\n\n'
        '@id("no-staging")\n@reason("x")\n'
        'forbid (principal, action, resource in Tether::Service::"tickets-staging");\n'
    )
    w = only(warnings(write_policies({"a.cedar": text}), schema, example_catalog), "shadowed_permit")
    assert (w.line, w.policy_id) == (3, "staging-reads") and "`no-staging` (a.cedar:7)" in w.message


def test_narrower_forbid_does_not_shadow(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """A forbid with a condition the permit lacks leaves some requests allowed: no warning."""
    text = BASE + (
        '\n@id("burst")\n@reason("x")\n'
        'forbid (principal, action in Tether::Action::"reads", resource in Tether::Service::"tickets")\n'
        "when { context.risk.calls_last_minute > 100 };\n"
    )
    assert warnings(write_policies({"a.cedar": text}), schema, example_catalog) == []


def test_approval_without_unless(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """An @approval forbid with no `unless { context.approval.granted }` cannot be lifted by a yes."""
    text = BASE + (
        '\n@id("ask")\n@approval("a human decides")\n'
        'forbid (principal, action in Tether::Action::"reads", resource in Tether::Service::"tickets");\n'
    )
    w = only(warnings(write_policies({"a.cedar": text}), schema, example_catalog), "approval_without_unless")
    assert (w.line, w.column, w.policy_id) == (7, 1, "ask")


def test_without_catalog_only_catalog_free_checks_run(write_policies: Write, schema: cedarpy.Schema) -> None:
    """With no catalog, references are not judged and a note says so."""
    text = 'permit (principal, action, resource == Tether::Tool::"emial.send");\n'
    result = analyze(load_bundle(write_policies({"a.cedar": text}), schema), schema, None)
    assert result.warnings == () and "no catalog" in result.notes[0]


def test_strict_turns_warnings_into_a_refusal(
    write_policies: Write, schema: cedarpy.Schema, example_catalog: Catalog
) -> None:
    """`strict` refuses a set with warnings, code policy_warnings, every warning in details."""
    directory = write_policies(
        {"a.cedar": 'permit (principal, action, resource == Tether::Tool::"emial.send");\n'}
    )
    load_checked(directory, schema, example_catalog)  # not strict: loads
    with pytest.raises(PolicyError) as info:
        load_checked(directory, schema, example_catalog, strict=True)
    assert info.value.code == "policy_warnings"
    assert info.value.details["warnings"][0]["kind"] == "unknown_entity"
    assert "`a.cedar` line 1 column 40" in info.value.message


def test_validate_cli_strict_exits_nonzero_with_json(write_policies: Write) -> None:
    """`tether policy validate --strict --json` lists warnings and exits 1."""
    directory = write_policies(
        {"a.cedar": 'permit (principal, action, resource == Tether::Tool::"emial.send");\n'}
    )
    args = ["policy", "validate", str(directory), "--catalog", str(EXAMPLES / "catalog.yaml"), "--json"]
    lax = CliRunner().invoke(main, args)
    assert lax.exit_code == 0 and json.loads(lax.output)["warnings"][0]["line"] == 1
    strict = CliRunner().invoke(main, [*args, "--strict"])
    assert strict.exit_code == 1 and json.loads(strict.output)["ok"] is False


def test_every_kind_is_documented() -> None:
    """Each warning kind is described in docs/policy-analysis.md."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policy-analysis.md").read_text()
    assert all(f"`{kind}`" in doc for kind in KINDS)

"""Loading policy directories: validation, file and line in errors, versions, ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cedarpy
import pytest

from tether.errors import PolicyError
from tether.policy import load_bundle, load_schema
from tether.policy.loader import statement_lines

from .conftest import EXAMPLES

PERMIT_READ = """@id("read")
@reason("reads are fine")
permit (principal, action == Tether::Action::"read", resource);
"""

Write = Callable[[dict[str, str]], Path]


@pytest.fixture(scope="module")
def schema() -> cedarpy.Schema:
    return load_schema()


def refused(directory: Path, schema: cedarpy.Schema) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_bundle(directory, schema)
    assert info.value.code == "policy_invalid"
    return info.value


def test_shipped_examples_load(schema: cedarpy.Schema) -> None:
    """The shipped example policies validate against the shipped schema."""
    bundle = load_bundle(EXAMPLES / "policies", schema)
    assert bundle.version.startswith("sha256:") and len(bundle.version) == len("sha256:") + 16
    ids = [info.policy_id for info in bundle.policies.values()]
    assert len(ids) == len(set(ids))
    assert all(info.id and (info.reason or info.approval) for info in bundle.policies.values())


def test_positional_ids_map_across_files(write_policies: Write, schema: cedarpy.Schema) -> None:
    """Cedar's policy0..N run across files in name order, each mapped to file and line."""
    directory = write_policies(
        {
            "b.cedar": "// second file\n\npermit (principal, action, resource);\n",
            "a.cedar": PERMIT_READ + "\nforbid (principal, action, resource) when { false };\n",
            "notes.txt": "not a policy",
        }
    )
    bundle = load_bundle(directory, schema)
    assert bundle.files == ("a.cedar", "b.cedar")
    assert [(i.file, i.line, i.effect) for i in bundle.policies.values()] == [
        ("a.cedar", 1, "permit"),
        ("a.cedar", 5, "forbid"),
        ("b.cedar", 3, "permit"),
    ]
    assert list(bundle.policies) == ["policy0", "policy1", "policy2"]
    assert bundle.policies["policy1"].policy_id == "a.cedar:5"
    assert bundle.policies["policy0"].policy_id == "read"


def test_parse_error_names_file_line_and_column(write_policies: Write, schema: cedarpy.Schema) -> None:
    """A syntax error is refused at the offending token's line and column, not the policy start."""
    broken = PERMIT_READ + "\n\npermit (principal, action, resource)\n  when { 1 >> 2 };\n"
    error = refused(write_policies({"00-ok.cedar": PERMIT_READ, "10-bad.cedar": broken}), schema)
    assert (error.details["file"], error.details["line"], error.details["column"]) == ("10-bad.cedar", 7, 13)
    assert "`" in error.message and "line 7 column 13" in error.message


def test_parse_error_after_recovery_points_at_first_bad_token(
    write_policies: Write, schema: cedarpy.Schema
) -> None:
    """A missing comma is located at the token after it, even where Cedar's parser recovers later."""
    text = PERMIT_READ + '\npermit (principal, action == Tether::Action::"read" resource);\n'
    error = refused(write_policies({"p.cedar": text}), schema)
    assert (error.details["line"], error.details["column"]) == (5, 53)


def test_missing_semicolon_names_the_line(write_policies: Write, schema: cedarpy.Schema) -> None:
    """A policy without its closing semicolon is located just after its last token."""
    text = PERMIT_READ + "\npermit (principal, action, resource)\n"
    error = refused(write_policies({"p.cedar": text}), schema)
    assert (error.details["file"], error.details["line"], error.details["column"]) == ("p.cedar", 5, 37)


def test_schema_error_names_file_and_line(write_policies: Write, schema: cedarpy.Schema) -> None:
    """A policy that parses but does not fit the schema is refused at its line."""
    text = PERMIT_READ + (
        '\n@id("typo")\npermit (principal, action == Tether::Action::"read", resource)\n'
        "when { resource.sensitivty > 1 };\n"
    )
    error = refused(write_policies({"typo.cedar": text}), schema)
    assert (error.details["file"], error.details["line"]) == ("typo.cedar", 5)
    assert "typo.cedar" in error.message and "line 5" in error.message
    assert error.details["errors"]


def test_unknown_action_refused(write_policies: Write, schema: cedarpy.Schema) -> None:
    """An action the schema does not declare is a validation error, not a silent no-op."""
    text = 'permit (principal, action == Tether::Action::"raed", resource);\n'
    assert refused(write_policies({"a.cedar": text}), schema).details["line"] == 1


def test_empty_directory_is_an_empty_bundle(write_policies: Write, schema: cedarpy.Schema) -> None:
    """No *.cedar file yields a bundle without a policy set (the engine denies all)."""
    bundle = load_bundle(write_policies({"README.md": "nothing"}), schema)
    assert bundle.is_empty and bundle.policy_set is None and not bundle.policies


def test_missing_directory_refused(tmp_path: Path, schema: cedarpy.Schema) -> None:
    """A policy directory that does not exist is an error, not an empty set."""
    refused(tmp_path / "nope", schema)


def test_version_tracks_names_and_contents(write_policies: Write, schema: cedarpy.Schema) -> None:
    """Same files give the same version; a changed body or a renamed file changes it."""

    def version(files: dict[str, str]) -> str:
        return load_bundle(write_policies(files), schema).version

    base = version({"a.cedar": PERMIT_READ})
    assert version({"a.cedar": PERMIT_READ}) == base
    assert version({"b.cedar": PERMIT_READ}) != base
    assert version({"a.cedar": PERMIT_READ + "\n// changed\n"}) != base


def test_approval_on_permit_refused(write_policies: Write, schema: cedarpy.Schema) -> None:
    """@approval only means something on a forbid; on a permit it is refused."""
    text = '@approval("why")\npermit (principal, action, resource);\n'
    assert refused(write_policies({"a.cedar": text}), schema).details["line"] == 1


def test_empty_approval_refused(write_policies: Write, schema: cedarpy.Schema) -> None:
    """An @approval without text would give the human no reason; refused."""
    text = '@approval("")\nforbid (principal, action, resource);\n'
    refused(write_policies({"a.cedar": text}), schema)


def test_duplicate_id_refused(write_policies: Write, schema: cedarpy.Schema) -> None:
    """Two policies with the same @id would make decision reasons ambiguous."""
    error = refused(write_policies({"a.cedar": PERMIT_READ, "b.cedar": PERMIT_READ}), schema)
    assert error.details["file"] == "b.cedar"


def test_templates_refused(write_policies: Write, schema: cedarpy.Schema) -> None:
    """A template authorizes nothing until linked; a policy directory must not hold one."""
    text = "permit (principal == ?principal, action, resource);\n"
    refused(write_policies({"t.cedar": text}), schema)


def test_invalid_utf8_refused(write_policies: Write, schema: cedarpy.Schema) -> None:
    """A file that is not UTF-8 is refused with its name."""
    directory = write_policies({})
    (directory / "bin.cedar").write_bytes(b"\xff\xfe permit")
    assert refused(directory, schema).details["file"] == "bin.cedar"


def test_statement_lines_skip_strings_and_comments() -> None:
    """Semicolons in strings and comments do not split statements; lines are 1-based."""
    text = (
        "// a comment; with a semicolon\n"
        '@reason("a; b // not a comment")\n'
        "permit (principal, action, resource);\n"
        "\n"
        'forbid (principal, action, resource) when { "x\\";" == "y" };\n'
        "  permit (principal, action, resource)\n"
    )
    assert statement_lines(text) == [2, 5, 6]

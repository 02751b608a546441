"""Typed arguments: canonicalization before Cedar, and the attacks on folder, host and list
rules that it defeats (security regressions are named after the attack)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tether.arguments import ArgumentRefused, canonicalize, parse_arg_specs, resolve_symlinks
from tether.catalog import parse_catalog
from tether.errors import ConfigError
from tether.model import Outcome
from tether.policy import PolicyEngine

from .conftest import make_request

SPECS = parse_arg_specs(
    {
        "path": {"type": "path", "roots": ["/data/public", "/data/shared"]},
        "one": {"type": "path", "roots": ["/data/public"]},
        "url": {"type": "url"},
        "to": "email",
        "host": "host",
        "mode": {"type": "enum", "values": ["fast", "slow"]},
        "n": {"type": "integer", "min": 1, "max": 10},
    },
    "test",
)

FS_CATALOG = {
    "intents": {"support.triage": ""},
    "services": [
        {
            "id": "fs",
            "sensitivity": 1,
            "environment": "prod",
            "egress": "internal",
            "arguments": {
                "path": {"type": "path", "roots": ["/data"]},
                "paths": {"type": "path", "roots": ["/data"]},
            },
        }
    ],
    "tools": [
        {"id": "fs.read", "service": "fs"},
        {"id": "fs.mail", "service": "fs", "arguments": {"to": "email", "url": "url"}},
    ],
}
PUBLIC_ONLY = """
@id("fs-read")
permit (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"fs");

@id("fs-public-only")
@reason("only files under /data/public")
forbid (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"fs")
unless { context.args.paths.isEmpty() || context.args.under.contains("/data/public") };

@id("mail-internal")
@reason("mail and links stay at example.com")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"fs.mail")
unless { ["example.com"].containsAll(context.args.hosts) };
"""
# The bypassable form this release replaces: a string pattern over the raw argument.
OLD_STYLE = """
@id("fs-read")
permit (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"fs");

@id("fs-like")
forbid (principal, action == Tether::Action::"tool:call", resource in Tether::Service::"fs")
unless { context.call.hasTag("paths") && context.call.getTag("paths") like "*/data/public/*" };
"""


def refused(arguments: dict[str, Any]) -> str:
    with pytest.raises(ArgumentRefused) as info:
        canonicalize(SPECS, arguments)
    return info.value.code


@pytest.fixture
def fs_engine(write_policies: Callable[..., Path]) -> Callable[[str], tuple[PolicyEngine, Any]]:
    catalog = parse_catalog(FS_CATALOG)

    def make(text: str) -> tuple[PolicyEngine, Any]:
        return PolicyEngine.from_paths(write_policies({"p.cedar": text}), catalog), catalog

    return make


def decide(engine: PolicyEngine, catalog: Any, resource: str, arguments: dict[str, Any]) -> Any:
    return engine.decide(make_request(catalog, "tool:call", resource, arguments=arguments))


# -- paths -----------------------------------------------------------------------------


def test_dotdot_traversal_is_denied() -> None:
    """`/data/public/../secret` leaves the declared roots: an invariant refusal."""
    assert refused({"path": "/data/public/../secret/key.txt"}) == "path_outside_roots"


def test_encoded_dotdot_traversal_is_denied() -> None:
    """`%2e%2e` and `%2f` are decoded before the dot segments are removed."""
    assert refused({"path": "/data/public/%2e%2e/secret/key.txt"}) == "path_outside_roots"
    assert refused({"path": "/data/public/..%2fsecret"}) == "path_outside_roots"


def test_double_encoded_traversal_is_denied() -> None:
    """`%252e%252e` decodes to `..` in two rounds: still refused."""
    assert refused({"path": "/data/public/%252e%252e/secret"}) == "path_outside_roots"


def test_prefix_sibling_folder_is_denied() -> None:
    """`/data/public-evil` shares a prefix with `/data/public` but is not under it."""
    assert refused({"one": "/data/public-evil/x"}) == "path_outside_roots"


def test_nul_and_control_characters_are_refused() -> None:
    """NUL, newline and bidi-control characters in a path are refused, never truncated."""
    for bad in ("/data/public/a\0/../../etc", "/data/public/a\n", "/data/public/\u202eexe.txt"):
        assert refused({"path": bad}) == "argument_invalid"


def test_home_expansion_and_backslash_are_refused() -> None:
    """`~` and `\\` mean something else to some servers: refused rather than guessed."""
    assert refused({"one": "~/.ssh/id_rsa"}) == "argument_invalid"
    assert refused({"one": "/data/public\\..\\secret"}) == "argument_invalid"


def test_paths_are_normalized() -> None:
    """Repeated and trailing slashes and `.` go; a relative path resolves against the one root."""
    c = canonicalize(SPECS, {"path": "//data//public/./a/b/", "one": "notes/x.txt"})
    assert c.forward == {"path": "/data/public/a/b", "one": "/data/public/notes/x.txt"}
    assert "/data/public" in c.typed["path"]["under"] and "/data/public/a/b" in c.typed["path"]["under"]
    assert c.scalars["path"] == "/data/public/a/b"


def test_relative_path_with_two_roots_is_refused() -> None:
    """With two roots a relative path is ambiguous: refused."""
    assert refused({"path": "a.txt"}) == "argument_invalid"


def test_symlink_out_of_root_is_denied(tmp_path: Path) -> None:
    """A symlink under the root that points outside resolves to its target: refused."""
    (tmp_path / "public").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    (tmp_path / "public" / "link").symlink_to(tmp_path / "secret" / "key")
    specs = parse_arg_specs({"path": {"type": "path", "roots": [str(tmp_path / "public")]}}, "t")
    resolved = resolve_symlinks(specs, {"path": str(tmp_path / "public" / "link")}, os.path.realpath)
    assert resolved["path"] == str(tmp_path / "secret" / "key")
    with pytest.raises(ArgumentRefused) as info:
        canonicalize(specs, resolved)
    assert info.value.code == "path_outside_roots"


def test_symlinked_root_keeps_its_declared_name(tmp_path: Path) -> None:
    """A root that is itself a symlink (`/data` → `/mnt/data`) still names its files."""
    (tmp_path / "real" / "public").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    root = str(tmp_path / "alias" / "public")
    specs = parse_arg_specs({"path": {"type": "path", "roots": [root]}}, "t")
    resolved = resolve_symlinks(specs, {"path": root + "/x.txt"}, os.path.realpath)
    assert canonicalize(specs, resolved).forward["path"] == root + "/x.txt"


def test_list_packing_every_element_is_checked() -> None:
    """In a list every element is canonical and checked; one outside the roots refuses the call."""
    assert refused({"path": ["/data/public/a", "/data/public/../../etc/passwd"]}) == "path_outside_roots"
    c = canonicalize(SPECS, {"path": ["/data/public/a", "/data/shared/b"]})
    assert c.typed["path"]["count"] == 2
    assert "/data/public" not in c.typed["path"]["under"]  # not every element is under it
    assert "/data/public" in c.typed["path"]["under_any"]
    assert "path" not in c.scalars


def test_catalog_path_without_roots_is_refused() -> None:
    """A `path` declared without roots could name anything: the catalog is refused."""
    bad = {**FS_CATALOG, "tools": [{"id": "fs.x", "service": "fs", "arguments": {"p": "path"}}]}
    with pytest.raises(ConfigError) as info:
        parse_catalog(bad)
    assert info.value.code == "catalog_invalid" and "arguments.p" in info.value.message


# -- urls, emails, hosts, enums, numbers ------------------------------------------------


def test_url_host_is_idna_normalized() -> None:
    """Scheme and host lower-cased, host IDNA (punycode), dot segments removed, fragment dropped."""
    c = canonicalize(SPECS, {"url": "HTTPS://Bücher.Example:443/a/%2e%2e/b?q=1#frag"})
    assert c.forward["url"] == "https://xn--bcher-kva.example/b?q=1"
    assert c.typed["url"]["hosts"] == ["xn--bcher-kva.example"] and c.typed["url"]["ports"] == [443]


def test_url_userinfo_host_confusion_is_refused() -> None:
    """`http://good.example@evil.example/` names evil.example: refused outright."""
    assert refused({"url": "http://good.example@evil.example/"}) == "argument_invalid"


def test_url_numeric_host_obfuscation_is_refused() -> None:
    """`0x7f.1` or `2130706433` may be read as 127.0.0.1 by a client: refused."""
    assert refused({"url": "http://0x7f.1/"}) == "argument_invalid"
    assert refused({"url": "http://2130706433/"}) == "argument_invalid"
    assert canonicalize(SPECS, {"url": "http://[::FFFF:7f00:1]/"}).typed["url"]["hosts"] == ["::ffff:7f00:1"]


def test_url_scheme_not_declared_is_refused() -> None:
    """`file:` and `javascript:` are not URLs of the declared kind."""
    assert refused({"url": "file:///etc/passwd"}) == "argument_invalid"


def test_email_list_smuggling_is_refused() -> None:
    """`a@example.com,b@evil.example` and display names are not one plain address."""
    assert refused({"to": "a@example.com,b@evil.example"}) == "argument_invalid"
    assert refused({"to": "Boss <b@evil.example>"}) == "argument_invalid"
    assert canonicalize(SPECS, {"to": "Ann@EXAMPLE.com."}).forward["to"] == "Ann@example.com"


def test_host_enum_and_bounded_numbers() -> None:
    """Hosts IDNA-normalized; enum values exact; integers within bounds, booleans not numbers."""
    assert canonicalize(SPECS, {"host": "API.Example.COM."}).forward["host"] == "api.example.com"
    assert refused({"mode": "FAST"}) == "argument_invalid"
    assert refused({"n": 11}) == "argument_invalid" and refused({"n": True}) == "argument_invalid"
    c = canonicalize(SPECS, {"n": [2, 7]})
    assert (c.typed["n"]["min"], c.typed["n"]["max"]) == (2, 7)


# -- through the engine ------------------------------------------------------------------


def test_folder_rule_holds_for_every_spelling(fs_engine: Any) -> None:
    """`context.args.under` allows public files and denies traversal, encoding and packing."""
    engine, catalog = fs_engine(PUBLIC_ONLY)
    ok = decide(engine, catalog, "fs.read", {"path": "/data/public/a.txt"})
    assert ok.outcome is Outcome.ALLOW
    for args, code in (
        ({"path": "/data/public/../secret/key"}, "policy_forbid"),
        ({"path": "/data/public/%2e%2e/secret/key"}, "policy_forbid"),
        ({"paths": ["/data/public/a", "/data/secret/key"]}, "policy_forbid"),
        ({"path": "/data/public/a", "paths": ["/data/secret/key"]}, "policy_forbid"),
        ({"path": "/etc/passwd"}, "path_outside_roots"),
    ):
        result = decide(engine, catalog, "fs.read", args)
        assert (result.outcome, result.code) == (Outcome.DENY, code), args
    inv = decide(engine, catalog, "fs.read", {"path": "/etc/passwd"})
    assert inv.reasons[0].policy_id == "invariant"


def test_list_packing_defeated_the_old_like_rule(fs_engine: Any) -> None:
    """A `like` over `context.call` never sees a declared list, so packing cannot pass it."""
    engine, catalog = fs_engine(OLD_STYLE)
    packed = decide(engine, catalog, "fs.read", {"paths": ["/data/public/a", "/data/secret/key"]})
    assert packed.outcome is Outcome.DENY  # no `paths` tag: the forbid's `unless` is false


def test_host_rule_applies_to_every_host(fs_engine: Any) -> None:
    """`containsAll(context.args.hosts)`: every URL and address of the call must be internal."""
    engine, catalog = fs_engine(PUBLIC_ONLY)
    ok = decide(engine, catalog, "fs.mail", {"to": "a@Example.com", "url": "https://example.com/x"})
    bad = decide(engine, catalog, "fs.mail", {"to": "a@example.com", "url": "https://evil.example/x"})
    assert ok.outcome is Outcome.ALLOW
    assert (bad.outcome, bad.code) == (Outcome.DENY, "policy_forbid")


def test_policy_never_sees_the_raw_spelling(fs_engine: Any) -> None:
    """`context.call` carries the canonical text of a typed scalar, not the raw value."""
    rule = (
        '@id("p")\npermit (principal, action, resource)\n'
        'when { context.call.hasTag("path") && context.call.getTag("path") == "/data/public/a.txt" };\n'
    )
    engine, catalog = fs_engine(rule)
    result = decide(engine, catalog, "fs.read", {"path": "/data//public/./x/../a.txt"})
    assert result.outcome is Outcome.ALLOW
    assert result.arguments.audit() == {"path": "/data/public/a.txt"}

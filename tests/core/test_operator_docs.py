"""The operator docs name only commands, options, settings and tests that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from tether import config_docs
from tether.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["operations.md", "policy.md", "catalog.md", "troubleshooting.md", "threat-model.md", "tls.md"]
TICKED = re.compile(r"`([^`\n]+)`")
SECTIONS = {k.name.split(".")[0] for k in config_docs.settings_keys() if "." in k.name}


def _expand(cmdline: str) -> list[str]:
    """`tether store backup/restore` names two commands."""
    words = cmdline.split(" ")
    for i, w in enumerate(words[:3]):
        if "/" in w and not w.startswith(("-", "/", ".")):
            return [c for alt in w.split("/") for c in _expand(" ".join([*words[:i], alt, *words[i + 1 :]]))]
    return [cmdline]


def _commands(text: str) -> list[str]:
    """`tether …` spans in backticks, and `tether …` lines inside fenced shell blocks."""
    found = [c for m in TICKED.findall(text) if m.startswith("tether ") for c in _expand(m)]
    fenced = re.findall(r"```(?:sh|console)?\n(.*?)```", text, re.DOTALL)
    for block in fenced:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("tether "):
                found.append(line)
    return found


def _resolve(cmdline: str) -> tuple[click.Command, list[str]]:
    words = shlex.split(cmdline.replace("…", "X").replace("|", " "), posix=True)[1:]
    cmd: click.Command = main
    rest = list(words)
    # get_command, not .commands: `tether` imports a command's module on first use.
    while rest and isinstance(cmd, click.Group) and (sub := cmd.get_command(click.Context(cmd), rest[0])):
        cmd = sub
        rest.pop(0)
    assert cmd is not main, f"`{cmdline}`: no such command"
    assert not isinstance(cmd, click.Group) or not rest or rest[0].startswith("-"), (
        f"`{cmdline}`: `{rest[0]}` is not a subcommand of `{cmd.name}`"
    )
    return cmd, rest


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_and_option_named_exists(doc):
    """Each `tether …` the page names resolves to a command, with options it accepts."""
    text = (ROOT / "docs" / doc).read_text()
    for cmdline in _commands(text):
        cmd, rest = _resolve(cmdline)
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in opts, f"`{cmdline}`: `{cmd.name}` has no option `{word}`"


@pytest.mark.parametrize("doc", DOCS)
def test_every_setting_named_exists(doc):
    """Each dotted setting the page names (`limits.store_timeout_ms`) is a real key."""
    keys = {k.name.replace("[]", "") for k in config_docs.settings_keys()}
    from tether.audit.event import EVENT_TYPES  # event names look like settings (`policy.loaded`)

    text = (ROOT / "docs" / doc).read_text()
    for span in TICKED.findall(text):
        span = span.split(" ", 1)[0].rstrip(",")
        head = span.split(".", 1)[0]
        if (
            span not in EVENT_TYPES
            and head in SECTIONS
            and re.fullmatch(r"[a-z_]+(\.[a-z_<>]+)+", span)
            and "<" not in span
        ):
            assert span in keys, f"{doc}: `{span}` is not a setting"


def test_threat_model_cites_tests_that_exist():
    """Every test file and test function the threat model cites is in tests/."""
    text = (ROOT / "docs" / "threat-model.md").read_text()
    current: Path | None = None
    cited = 0
    for span in TICKED.findall(text):
        m = re.fullmatch(r"([a-z_]+/test_[a-z0-9_]+\.py)(?:::(test_[a-z0-9_]+))?", span)
        if m:
            current = ROOT / "tests" / m.group(1)
            assert current.exists(), span
            names = [m.group(2)] if m.group(2) else []
        elif re.fullmatch(r"::test_[a-z0-9_]+", span) and current is not None:
            names = [span[2:]]
        else:
            continue
        for name in names:
            assert re.search(rf"def {name}\(", current.read_text()), f"{current.name}::{name}"
            cited += 1
    assert cited >= 30


def test_policy_guide_examples_validate_against_the_schema(tmp_path):
    """Every ```cedar example in docs/policy.md validates against the shipped schema."""
    from tether.catalog import load_catalog
    from tether.policy.engine import PolicyEngine

    blocks = re.findall(r"```cedar\n(.*?)```", (ROOT / "docs" / "policy.md").read_text(), re.DOTALL)
    assert len(blocks) >= 5
    for i, block in enumerate(blocks):
        (tmp_path / f"{i:02d}.cedar").write_text(block)
    engine = PolicyEngine()
    engine.set_catalog(load_catalog(ROOT / "src" / "tether" / "examples" / "catalog.yaml"))
    bundle = engine.reload(tmp_path)
    assert len(bundle.files) == len(blocks)

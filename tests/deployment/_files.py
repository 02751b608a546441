"""Shared helpers of the deployment-file checks: where the files are, and env → settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tether.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLES = ROOT / "src" / "tether" / "examples"

#: A syntactically valid master key for checks that start nothing (32 zero bytes).
TEST_MASTER_KEY = "A" * 43


def tool_required() -> bool:
    """A missing tool fails the check under CI (``make test`` installs it), skips elsewhere."""
    env = os.environ
    return any(env.get(k, "").lower() in ("1", "true", "yes") for k in ("CI", "TETHER_TEST_PG"))


def settings_from_env(env: Mapping[str, str], state_dir: Path) -> Settings:
    """Validated settings for exactly these ``TETHER_*`` variables: an unknown key or a
    wrong value raises ``ConfigError`` naming it, as the broker would at start."""
    return load_settings(state_dir, environ=dict(env))


def unknown_tether_env(env: Mapping[str, str]) -> list[str]:
    """``TETHER_*`` names that are neither a setting nor one of the broker's own variables."""
    from dataclasses import fields

    settable = {f.name for f in fields(Settings)} - {"state_dir"}
    own = {"TETHER_STATE_DIR", "TETHER_MASTER_KEY"}
    return sorted(
        k
        for k in env
        if k.startswith("TETHER_") and k not in own and k[7:].lower().split("__")[0] not in settable
    )

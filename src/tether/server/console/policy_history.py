"""Policy texts by version, so the console can show a diff between any two versions in force.

The audit log records each version's id and file names, not the text. The console keeps
a snapshot per version under ``<state>/console/policies/<version>.json``, taken when the
version is in force and only if the files on disk still hash to it (the version is a
digest of the named texts), so a snapshot is never the text of another version.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

from tether.policy.loader import _version

_SAFE = re.compile(r"^sha256:[0-9a-f]{16}$")


def _dir(state_dir: Path) -> Path:
    return state_dir / "console" / "policies"


def _file(state_dir: Path, version: str) -> Path:
    return _dir(state_dir) / (version.replace(":", "-") + ".json")


def snapshot(state_dir: Path, policy_dir: Path, version: str, files: tuple[str, ...], now: float) -> bool:
    """Save the texts of ``version`` if not saved yet and the files still hash to it."""
    if not _SAFE.match(version) or _file(state_dir, version).exists():
        return False
    try:
        named = [(name, (policy_dir / name).read_text()) for name in files]
    except OSError:
        return False
    if _version(named) != version:
        return False  # edited since it was loaded: this text is not that version
    target = _file(state_dir, version)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "taken_at": now, "files": dict(named)}))
    os.replace(tmp, target)
    return True


def load(state_dir: Path, version: str) -> dict[str, Any] | None:
    if not _SAFE.match(version):
        return None
    try:
        doc = json.loads(_file(state_dir, version).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def versions(state_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(_dir(state_dir).glob("sha256-*.json")):
        doc = load(state_dir, p.stem.replace("-", ":", 1))
        if doc:
            out.append(
                {"version": doc["version"], "taken_at": doc.get("taken_at", 0), "files": sorted(doc["files"])}
            )
    return sorted(out, key=lambda d: d["taken_at"], reverse=True)


def diff(state_dir: Path, a: str, b: str) -> list[str] | None:
    """A unified diff from version ``a`` to ``b``; None if either has no snapshot."""
    old, new = load(state_dir, a), load(state_dir, b)
    if old is None or new is None:
        return None
    lines: list[str] = []
    for name in sorted(set(old["files"]) | set(new["files"])):
        lines += difflib.unified_diff(
            str(old["files"].get(name, "")).splitlines(),
            str(new["files"].get(name, "")).splitlines(),
            fromfile=f"{a}/{name}",
            tofile=f"{b}/{name}",
            lineterm="",
        )
    return lines

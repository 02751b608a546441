"""Wheels for an offline install: this tree's wheel, and installed distributions repacked.

``repack`` turns a distribution installed in this environment back into a wheel (its
RECORD lists every file; the hashes are recomputed), so a fresh venv can resolve the
client's requirements with ``pip install --no-index --find-links`` and no network.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_SKIP = {"INSTALLER", "RECORD", "REQUESTED", "direct_url.json"}


def base_requirements(repo: Path) -> list[Requirement]:
    """``[project].dependencies`` of the tree: what a plain ``pip install tether`` asks for."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def closure(requirements: list[Requirement]) -> list[metadata.Distribution]:
    """The installed distributions these requirements pull in, transitively (markers applied)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [(r, "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in seen and not req.extras:
            continue
        dist = seen.get(name) or metadata.distribution(req.name)
        seen[name] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            for e in ("", *sorted(req.extras)):
                todo.append((sub, e))
    return list(seen.values())


def _wheel_name(dist: metadata.Distribution) -> str:
    tags = [v for k, v in _wheel_fields(dist) if k == "Tag"]
    if not tags:
        raise RuntimeError(f"{dist.metadata['Name']}: no Tag in its WHEEL file")
    py, abi, plat = (".".join(dict.fromkeys(t.split("-")[i] for t in tags)) for i in range(3))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return f"{name}-{dist.version}-{py}-{abi}-{plat}.whl"


def _wheel_fields(dist: metadata.Distribution) -> list[tuple[str, str]]:
    text = dist.read_text("WHEEL")
    if text is None:
        raise RuntimeError(f"{dist.metadata['Name']} was not installed from a wheel (no WHEEL file)")
    return [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in text.splitlines()) if v]


def repack(dist: metadata.Distribution, out: Path) -> Path:
    """Zip an installed distribution's files (per its RECORD) into ``out`` as a wheel."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / _wheel_name(dist)
    root = Path(str(dist.locate_file("")))
    files = [
        f
        for f in dist.files or []
        if not str(f).startswith("..") and "__pycache__" not in f.parts and f.name not in _SKIP
    ]
    info = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if info is None:
        raise RuntimeError(f"{dist.metadata['Name']}: no .dist-info among its files")
    record = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in files:
            data = (root / f).read_bytes()
            zf.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return target


def build_project_wheel(repo: Path, build_dir: Path, out: Path) -> Path:
    """``pip wheel`` of a clean copy of the tree (the source tree gets no build output)."""
    build_dir.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (repo / name).exists():
            shutil.copy2(repo / name, build_dir / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(repo / "src", build_dir / "src", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-q"]
    done = subprocess.run(
        [*pip, "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(build_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the wheel failed:\n{done.stdout}\n{done.stderr}")
    (wheel,) = out.glob("tether-*.whl")
    return wheel

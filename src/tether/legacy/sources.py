"""What a scan reads: working-tree files and the lines each git commit added.

Everything that cannot be read as text is skipped and counted in :class:`Skips`
(binary, too large, unreadable, symlink loops and dangling links, broken git objects):
a scan of a real estate must finish and say what it did not look at.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

MAX_BYTES = 2 * 1024 * 1024
SKIP_DIRS = {".git", ".hg", ".svn"}
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass
class Skips:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(where)

    def view(self) -> dict[str, object]:
        return {"total": sum(self.counts.values()), "by_reason": dict(self.counts), "examples": self.examples}


@dataclass(frozen=True, slots=True)
class TextFile:
    path: str  # relative to the scanned root, `/`-separated
    lines: list[tuple[int, str]]
    mtime: float


def decode(data: bytes) -> str | None:
    """Text of ``data``, or None for binary content (a NUL early on, or not UTF-8)."""
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def tree_files(
    root: Path, skips: Skips, max_bytes: int = MAX_BYTES, exclude: tuple[str, ...] = ()
) -> Iterator[TextFile]:
    """Text files under ``root`` (a file or a directory); symlinked directories are not followed."""
    root = root.absolute()
    if root.is_file():
        candidates: Iterator[Path] = iter([root])
        base = root.parent
    else:
        candidates = _walk(root, skips)
        base = root
    for p in candidates:
        rel = p.relative_to(base).as_posix()
        if any(fnmatch(rel, g) for g in exclude):
            continue
        try:
            st = p.stat()  # follows a symlink: a loop or a dangling link raises here
        except OSError as e:
            skips.add("symlink_loop" if e.errno == 40 else "unreadable", rel)
            continue
        if not p.is_file():
            continue
        if st.st_size > max_bytes:
            skips.add("too_large", rel)
            continue
        try:
            data = p.read_bytes()
        except OSError:
            skips.add("unreadable", rel)
            continue
        text = decode(data)
        if text is None:
            skips.add("binary", rel)
            continue
        yield TextFile(rel, list(enumerate(text.splitlines(), start=1)), st.st_mtime)


def _walk(root: Path, skips: Skips) -> Iterator[Path]:
    def onerror(e: OSError) -> None:
        skips.add("unreadable", str(Path(e.filename).relative_to(root)) if e.filename else "?")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for f in sorted(filenames):
            yield Path(dirpath) / f


def process_env(pid: int, skips: Skips) -> TextFile | None:
    """The environment a running process started with (Linux ``/proc/PID/environ``), one
    ``NAME=value`` per line, named ``process:<pid>:<command>``."""
    proc = Path("/proc") / str(pid)
    try:
        data = (proc / "environ").read_bytes()
        comm = (proc / "comm").read_text().strip()
    except OSError:
        skips.add("unreadable", f"process:{pid}")
        return None
    lines = [b.decode("utf-8", "replace") for b in data.split(b"\0") if b]
    return TextFile(f"process:{pid}:{comm}.env", list(enumerate(lines, start=1)), 0.0)


@dataclass(frozen=True, slots=True)
class AddedLines:
    commit: str
    authored_at: float
    path: str
    lines: list[tuple[int, str]]


def is_git_repo(root: Path) -> bool:
    return root.is_dir() and _git(root, "rev-parse", "--git-dir").returncode == 0


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False)


def commit_count(root: Path) -> int:
    r = _git(root, "rev-list", "--all", "--count")
    return int(r.stdout.strip() or 0) if r.returncode == 0 else 0


def history(
    root: Path, skips: Skips, on_commit: Callable[[], None] = lambda: None, max_bytes: int = MAX_BYTES
) -> Iterator[AddedLines]:
    """Lines added by every commit reachable from any ref, oldest first (deleted files included)."""
    cmd = [
        "git", "-C", str(root), "-c", "core.quotepath=off", "log", "--all", "--reverse",
        "--no-color", "--no-renames", "--no-ext-diff", "--no-textconv", "-p", "-U0",
        "--format=%x00commit %H %at",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    commit, when, path = "", 0.0, ""
    lines: list[tuple[int, str]] = []
    size, number = 0, 0
    in_header = False  # "+++ " is a file header only between "diff --git" and the first "@@"

    def flush() -> Iterator[AddedLines]:
        if path and lines:
            yield AddedLines(commit, when, path, list(lines))

    for raw in proc.stdout:
        if raw.startswith(b"\0commit "):
            yield from flush()
            lines, path, size = [], "", 0
            parts = raw[8:].split()
            commit, when = parts[0].decode(), float(parts[1]) if len(parts) > 1 else 0.0
            on_commit()
        elif raw.startswith(b"diff --git "):
            yield from flush()
            lines, path, size, in_header = [], "", 0, True
        elif in_header and raw.startswith(b"+++ "):
            yield from flush()
            lines, size = [], 0
            target = raw[4:].rstrip(b"\n").decode("utf-8", "replace")
            path = target[2:] if target.startswith("b/") else ""
        elif raw.startswith(b"@@"):
            in_header = False
            m = _HUNK.match(raw.decode("ascii", "replace"))
            number = int(m.group(1)) if m else 0
        elif raw.startswith(b"+") and path and not in_header:
            size += len(raw)
            if size > max_bytes:
                if lines:
                    skips.add("too_large", f"{commit[:12]}:{path}")
                lines, path = [], ""
                continue
            text = decode(raw[1:])
            if text is None:
                skips.add("binary", f"{commit[:12]}:{path}")
                lines, path = [], ""
                continue
            lines.append((number, text.rstrip("\n")))
            number += 1
    yield from flush()
    err = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        # A broken object stops `git log` where it is; what was read before still counts.
        skips.add(
            "git_history_unreadable",
            err.decode("utf-8", "replace").strip().splitlines()[-1:][0] if err.strip() else "git log failed",
        )


def show(root: Path, commit: str, path: str) -> str | None:
    """The text of ``path`` at ``commit`` (None when absent or binary)."""
    r = _git(root, "show", f"{commit}:{path}")
    return decode(r.stdout) if r.returncode == 0 else None

"""``tether secrets scan``: findings over working trees and whole git histories.

One finding per secret (by fingerprint) per file: its working-tree line when the secret is
still there, else the oldest commit that added it. ``first_seen`` is the oldest author date
of any commit that carried it (the file's mtime when it was never committed); ``live`` says
whether it is still in a working tree, anywhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tether.legacy import sources
from tether.legacy.engine import Engine, Hit, engine
from tether.legacy.sources import Skips

_URL = re.compile(r"https?://[^\s'\"<>]+")
_STOP = {"external", "internal", "staging", "prod", "api", "service", "the"}


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    fingerprint: str
    root: str
    path: str
    line: int
    source: str  # "tree" | "history"
    commit: str | None
    authored_at: float | None
    first_seen: float
    service: str | None
    live: bool

    def view(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "root": self.root,
            "path": self.path,
            "line": self.line,
            "location": f"{self.path}:{self.line}",
            "source": self.source,
            "commit": self.commit,
            "authored_at": self.authored_at,
            "first_seen": self.first_seen,
            "age_days": round(max(0.0, now - self.first_seen) / 86400, 1),
            "service": self.service,
            "live": self.live,
        }


@dataclass
class ScanResult:
    findings: list[Finding]
    skips: Skips
    files: int = 0
    commits: int = 0
    tree_seconds: float = 0.0
    history_seconds: float = 0.0
    roots: list[str] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        now = time.time()
        return {
            "roots": self.roots,
            "findings": [f.view(now) for f in self.findings],
            "skipped": self.skips.view(),
            "stats": {
                "files": self.files,
                "commits": self.commits,
                "tree_seconds": round(self.tree_seconds, 3),
                "history_seconds": round(self.history_seconds, 3),
                "files_per_second": round(self.files / self.tree_seconds, 1) if self.tree_seconds else None,
                "commits_per_second": (
                    round(self.commits / self.history_seconds, 1) if self.history_seconds else None
                ),
            },
        }


class Attributor:
    """Which catalog service a secret most likely belongs to.

    A URL of a known service within three lines of the secret wins; otherwise a word of a
    service id in the line (``SLACK_TOKEN`` → ``slack-external``).
    """

    def __init__(self, hosts: Mapping[str, str], services: Iterable[str]) -> None:
        self.hosts = {h.lower(): s for h, s in hosts.items()}
        self._words: list[tuple[str, str]] = []
        for sid in services:
            for w in re.split(r"[-_.]", sid.lower()):
                if len(w) >= 3 and w not in _STOP:
                    self._words.append((w, sid))

    def __call__(self, path: str, lines: Sequence[tuple[int, str]], line: int) -> str | None:
        near = [t for n, t in lines if abs(n - line) <= 3]
        for text in sorted(near, key=lambda t: 0 if t in (x for n, x in lines if n == line) else 1):
            for url in _URL.findall(text):
                host = (urlsplit(url).hostname or "").lower()
                if host in self.hosts:
                    return self.hosts[host]
        here = next((t for n, t in lines if n == line), "")
        for text in (here, path, *near):  # the line itself, then the file's name, then neighbours
            for word, sid in self._words:
                if re.search(rf"(?<![a-z]){re.escape(word)}(?![a-z])", text.lower()):
                    return sid
        return None


@dataclass(frozen=True, slots=True)
class _Occ:
    hit: Hit
    root: str
    path: str
    source: str
    commit: str | None
    when: float
    service: str | None


class Progress:
    """What a long history scan reports to (the CLI draws a bar)."""

    def start(self, total: int) -> None: ...
    def advance(self) -> None: ...


def scan(
    paths: Sequence[Path],
    *,
    history: bool = True,
    hosts: Mapping[str, str] | None = None,
    services: Iterable[str] = (),
    progress: Progress | None = None,
    max_bytes: int = sources.MAX_BYTES,
    exclude: tuple[str, ...] = (),
    processes: Sequence[int] = (),
) -> ScanResult:
    hosts = dict(hosts or {})
    attribute = Attributor(hosts, services)
    skips = Skips()
    result = ScanResult([], skips, roots=[str(p) for p in paths])
    occs: list[_Occ] = []
    with engine(sorted(hosts)) as eng:
        for root in paths:
            if not root.exists():
                skips.add("missing", str(root))
                continue
            t0 = time.perf_counter()
            for f in sources.tree_files(root, skips, max_bytes, exclude):
                result.files += 1
                occs += _occ(eng, attribute, str(root), f.path, f.lines, "tree", None, f.mtime)
            result.tree_seconds += time.perf_counter() - t0
            if history and sources.is_git_repo(root):
                t0 = time.perf_counter()
                occs += _history(eng, attribute, root, skips, result, progress, max_bytes)
                result.history_seconds += time.perf_counter() - t0
        for pid in processes:  # opt-in: what a running service was started with
            env = sources.process_env(pid, skips)
            if env is not None:
                occs += _occ(eng, attribute, "process", env.path, env.lines, "tree", None, time.time())
    result.findings = _collapse(occs)
    return result


def _occ(
    eng: Engine,
    attribute: Callable[[str, Sequence[tuple[int, str]], int], str | None],
    root: str,
    path: str,
    lines: Sequence[tuple[int, str]],
    source: str,
    commit: str | None,
    when: float,
) -> list[_Occ]:
    return [
        _Occ(h, root, path, source, commit, when, attribute(path, lines, h.line))
        for h in eng.scan_lines(path, lines)
    ]


def _history(
    eng: Engine,
    attribute: Callable[[str, Sequence[tuple[int, str]], int], str | None],
    root: Path,
    skips: Skips,
    result: ScanResult,
    progress: Progress | None,
    max_bytes: int,
) -> list[_Occ]:
    if progress is not None:
        progress.start(sources.commit_count(root))

    def tick() -> None:
        result.commits += 1
        if progress is not None:
            progress.advance()

    out: list[_Occ] = []
    for added in sources.history(root, skips, tick, max_bytes):
        out += _occ(
            eng, attribute, str(root), added.path, added.lines, "history", added.commit, added.authored_at
        )
    return out


def _collapse(occs: list[_Occ]) -> list[Finding]:
    live = {o.hit.fingerprint for o in occs if o.source == "tree"}
    first: dict[str, float] = {}
    service: dict[str, str] = {}
    for o in occs:
        fp = o.hit.fingerprint
        first[fp] = min(first.get(fp, o.when), o.when)
        if o.service and fp not in service:
            service[fp] = o.service
    in_tree = {(o.hit.fingerprint, o.root, o.path) for o in occs if o.source == "tree"}
    chosen: dict[tuple[str, str, str, int], _Occ] = {}
    for o in occs:  # history comes oldest first: the first commit per (secret, file) wins
        fp = o.hit.fingerprint
        if o.source == "tree":
            chosen.setdefault((fp, o.root, o.path, o.hit.line), o)
        elif (fp, o.root, o.path) not in in_tree:
            chosen.setdefault((fp, o.root, o.path, -1), o)
    return sorted(
        (
            Finding(
                kind=o.hit.kind,
                fingerprint=o.hit.fingerprint,
                root=o.root,
                path=o.path,
                line=o.hit.line,
                source=o.source,
                commit=o.commit,
                authored_at=o.when if o.source == "history" else None,
                first_seen=first[o.hit.fingerprint],
                service=service.get(o.hit.fingerprint),
                live=o.hit.fingerprint in live,
            )
            for o in chosen.values()
        ),
        key=lambda f: (f.root, f.path, f.line, f.kind),
    )


_PG_LOGIN = re.compile(r"postgres(?:ql)?(?:\+\w+)?://([^:/\s@'\"]+):([^@\s/'\"]+)@")


def pg_login_of(root: Path, path: str, line: int, password: str, commit: str | None = None) -> str | None:
    """The user of the PostgreSQL URL on that line whose password is ``password``
    (``tether secrets pg-import FINGERPRINT``), or None."""
    text = _text_at(root, path, commit)
    lines = (text or "").splitlines()
    candidates = lines if commit else lines[line - 1 : line]
    for ln in candidates:
        for m in _PG_LOGIN.finditer(ln):
            if unquote(m.group(2)) == password or m.group(2) == password:
                return unquote(m.group(1))
    return None


def _text_at(root: Path, path: str, commit: str | None) -> str | None:
    if commit:
        return sources.show(root, commit, path)
    p = (root / path) if root.is_dir() else root
    try:
        return sources.decode(p.read_bytes())
    except OSError:
        return None


def value_of(root: Path, path: str, line: int, fp: str, commit: str | None = None) -> str | None:
    """Re-read the secret with fingerprint ``fp`` from its location (for ``tether secrets import``)."""
    if commit:
        text = sources.show(root, commit, path)
    else:
        p = (root / path) if root.is_dir() else root
        try:
            text = sources.decode(p.read_bytes())
        except OSError:
            return None
    if text is None:
        return None
    lines = list(enumerate(text.splitlines(), start=1))
    with engine() as eng:
        for h in eng.scan_lines(path, lines):
            if h.fingerprint == fp and (commit or h.line == line):
                return h.value
    return None

"""Load a directory of Cedar policies into an immutable :class:`PolicyBundle`.

Every ``*.cedar`` file of the directory (not recursive, sorted by name) is parsed and
validated on its own against the shipped schema, so that an error names the file and
the line of the policy at fault. cedarpy reports no source spans, so lines come from a
small lexer that splits a file into statements the same way Cedar does (``;`` outside
strings and ``//`` comments); the statement count is checked against Cedar's own before
the lines are trusted.

The files are then parsed once more as one text, in the same order, so Cedar's
positional ids (``policy0``, ``policy1``, …) map back to a file and a line through
:attr:`PolicyBundle.policies`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from tether.errors import PolicyError
from tether.policy.locate import locate_syntax_error, position_at

__all__ = [
    "PolicyBundle",
    "PolicyInfo",
    "empty_bundle",
    "load_bundle",
    "load_schema",
    "schema_text",
]

_CODE = "policy_invalid"
_FOR_POLICY_RE = re.compile(r"^for policy `(policy\d+)`,\s*")
_POSITIONAL_RE = re.compile(r"^policy(\d+)$")
# A file this large is a mistake or an attack on the loader, not a policy set.
_MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """Where one policy came from and what its annotations say."""

    file: str  # file name inside the policy directory
    line: int  # 1-based line where the policy (its first annotation) starts
    effect: str  # permit | forbid
    id: str | None = None  # @id
    reason: str | None = None  # @reason
    approval: str | None = None  # @approval: a deny by this forbid asks a human

    @property
    def policy_id(self) -> str:
        """The stable name reported in decisions: ``@id`` if set, else ``file:line``."""
        return self.id if self.id is not None else f"{self.file}:{self.line}"

    @property
    def message(self) -> str:
        return self.approval or self.reason or ""


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    """A validated policy set, immutable once built; the engine swaps whole bundles."""

    policy_set: cedarpy.PolicySet | None  # None: no policy at all, deny everything
    version: str
    policies: Mapping[str, PolicyInfo] = field(default_factory=dict)  # Cedar id → info
    files: tuple[str, ...] = ()
    # The same set minus every @approval forbid, with the same Cedar ids: a deny is
    # only worth a human's time if this set would allow the request.
    without_approvals: cedarpy.PolicySet | None = None
    #: Each file's text, by name, as it was loaded (for analysis and its positions).
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return self.policy_set is None


def schema_text() -> str:
    """The Cedar schema shipped with the package."""
    return resources.files("tether.policy").joinpath("tether.cedarschema").read_text("utf-8")


def load_schema(text: str | None = None) -> cedarpy.Schema:
    """Parse the shipped schema (or ``text``) into a reusable handle."""
    try:
        return cedarpy.Schema.from_str(schema_text() if text is None else text)
    except ValueError as exc:
        raise PolicyError(f"the cedar schema does not parse: {exc}", code="schema_invalid") from exc


def _version(named_texts: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for name, text in named_texts:
        # Length-prefix both parts so that moving bytes between a name and a body
        # (or between two files) can never produce the same version.
        for part in (name.encode(), text.encode()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return "sha256:" + digest.hexdigest()[:16]


def empty_bundle() -> PolicyBundle:
    """The bundle of an empty directory: no policy, so every request is denied."""
    return PolicyBundle(policy_set=None, version=_version([]))


def statement_lines(text: str) -> list[int]:
    """1-based start line of each statement of Cedar ``text``.

    A statement starts at its first character that is neither blank nor inside a
    comment, and ends at a ``;`` outside strings and comments. Trailing text with no
    ``;`` counts as a statement too, so that a missing semicolon gets a line.
    """
    starts: list[int] = []
    line = 1
    in_statement = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == "/" and text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif ch.isspace():
            pass
        else:
            if not in_statement:
                starts.append(line)
                in_statement = True
            if ch == ";":
                in_statement = False
            elif ch == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\":
                        i += 1
                    elif text[i] == "\n":
                        line += 1
                    i += 1
        i += 1
    return starts


def _fail(path: Path, line: int | None, detail: str, column: int | None = None, **extra: Any) -> PolicyError:
    where = f"`{path}`" if line is None else f"`{path}` line {line}"
    if line is not None and column is not None:
        where += f" column {column}"
        extra["column"] = column
    return PolicyError(f"invalid policy in {where}: {detail}", code=_CODE, file=path.name, line=line, **extra)


def _parse_error(path: Path, text: str, lines: list[int], exc: ValueError) -> PolicyError:
    # Cedar gives no position: re-parse statement by statement to find the culprit,
    # then token by token inside it (tether.policy.locate).
    chunks = _chunks(text, lines)
    for line, chunk in chunks:
        try:
            cedarpy.PolicySet.from_str(chunk)
        except ValueError as chunk_exc:
            return _located(path, chunk, line, str(chunk_exc))
    return _located(path, text, 1, str(exc)) if text.strip() else _fail(path, None, str(exc))


def _located(path: Path, chunk: str, first_line: int, message: str) -> PolicyError:
    """The error of ``chunk`` (which starts at the beginning of ``first_line``), at the
    line and column of its offending token when that can be told."""
    offset = locate_syntax_error(chunk, message)
    if offset is None:
        return _fail(path, first_line, message)
    pos = position_at(chunk, offset)
    return _fail(path, first_line + pos.line - 1, message, pos.column)


def _chunks(text: str, lines: list[int]) -> list[tuple[int, str]]:
    """Cut ``text`` at the statement start lines (statements never share a line here
    unless written so; then the later one is checked with the earlier)."""
    src = text.splitlines(keepends=True)
    bounds = sorted(set(lines))
    out: list[tuple[int, str]] = []
    for k, start in enumerate(bounds):
        end = bounds[k + 1] - 1 if k + 1 < len(bounds) else len(src)
        out.append((start, "".join(src[start - 1 : end])))
    return out


def _annotations(path: Path, text: str) -> list[tuple[str, dict[str, str]]]:
    """(effect, annotations) per policy, in Cedar's positional order."""
    doc = json.loads(cedarpy.policies_to_json_str(text))
    if doc.get("templates"):
        raise _fail(path, None, "templates (`?principal`, `?resource`) are not supported")
    static: dict[str, Any] = doc.get("staticPolicies", {})

    def position(pid: str) -> int:
        m = _POSITIONAL_RE.match(pid)
        return int(m.group(1)) if m else -1

    return [
        (static[pid]["effect"], dict(static[pid].get("annotations") or {}))
        for pid in sorted(static, key=position)
    ]


def _load_file(path: Path, schema: cedarpy.Schema) -> tuple[str, list[PolicyInfo]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(path, None, f"cannot read it: {exc.strerror}") from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise _fail(path, None, f"larger than {_MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, None, "not valid utf-8") from exc
    lines = statement_lines(text)
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        raise _parse_error(path, text, lines, exc) from exc
    annotated = _annotations(path, text)
    if len(annotated) != len(lines):
        # The lexer disagrees with Cedar (e.g. a `;` in syntax it does not know):
        # report every policy at line 1 rather than some at a wrong line.
        lines = [1] * len(annotated)

    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        found: list[tuple[int | None, str]] = []
        for err in result.errors:
            m = _POSITIONAL_RE.match(err.policy_id)
            index = int(m.group(1)) if m else -1
            found.append(
                (lines[index] if 0 <= index < len(lines) else None, _FOR_POLICY_RE.sub("", err.error))
            )
        found.sort(key=lambda e: e[0] or 0)
        errors = [{"file": path.name, "line": line, "message": msg} for line, msg in found]
        raise _fail(path, found[0][0], found[0][1], errors=errors)

    infos: list[PolicyInfo] = []
    for (effect, notes), line in zip(annotated, lines, strict=True):
        info = PolicyInfo(
            path.name, line, effect, notes.get("id"), notes.get("reason"), notes.get("approval")
        )
        if info.id is not None and not info.id.strip():
            raise _fail(path, line, "`@id` must not be empty")
        if info.approval is not None:
            if effect != "forbid":
                raise _fail(path, line, "`@approval` only makes sense on a `forbid` policy")
            if not info.approval.strip():
                raise _fail(path, line, "`@approval` needs the reason a human is asked")
        infos.append(info)
    return text, infos


def load_bundle(policy_dir: Path, schema: cedarpy.Schema) -> PolicyBundle:
    """Load and validate every ``*.cedar`` file of ``policy_dir``.

    Raises :class:`PolicyError` (code ``policy_invalid``) naming the file and line at
    fault; nothing is partially loaded.
    """
    if not policy_dir.is_dir():
        raise PolicyError(
            f"policy directory `{policy_dir}` does not exist", code=_CODE, file=str(policy_dir), line=None
        )
    paths = sorted(p for p in policy_dir.glob("*.cedar") if p.is_file())
    if not paths:
        return empty_bundle()
    named: list[tuple[str, str]] = []
    infos: list[PolicyInfo] = []
    for path in paths:
        text, file_infos = _load_file(path, schema)
        named.append((path.name, text))
        infos.extend(file_infos)

    seen: dict[str, PolicyInfo] = {}
    for info in infos:
        if info.id is None:
            continue
        if info.id in seen:
            other = seen[info.id]
            raise _fail(
                policy_dir / info.file,
                info.line,
                f'duplicate `@id("{info.id}")`, also at `{other.file}` line {other.line}',
            )
        seen[info.id] = info

    # Each file parsed alone, so the newline-joined text is the same statements in the
    # same order and Cedar numbers them policy0..N-1 across files.
    combined = "\n".join(text for _, text in named)
    policy_set = cedarpy.PolicySet.from_str(combined)
    if len(policy_set) != len(infos):
        raise PolicyError(
            "policy files do not combine into one set", code=_CODE, file=str(policy_dir), line=None
        )
    policies = {f"policy{i}": info for i, info in enumerate(infos)}
    return PolicyBundle(
        policy_set=policy_set,
        version=_version(named),
        policies=policies,
        files=tuple(name for name, _ in named),
        without_approvals=_without_approvals(combined, policies),
        sources=dict(named),
    )


def _without_approvals(combined: str, policies: Mapping[str, PolicyInfo]) -> cedarpy.PolicySet | None:
    if not any(info.approval is not None for info in policies.values()):
        return None
    doc = json.loads(cedarpy.policies_to_json_str(combined))
    static: dict[str, Any] = doc["staticPolicies"]
    for pid, info in policies.items():
        if info.approval is not None:
            del static[pid]
    # The JSON form keeps the ids as given, so reasons from either set mean the same.
    return cedarpy.PolicySet.from_json_str(json.dumps(doc))

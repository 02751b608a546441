"""The control mapping: load and validate ``controls.yaml``, evaluate its status rules.

The mapping is data reviewed like code. Loading refuses, naming the file and the
control, any control that cites an unknown mechanism or evidence key, any rule that reads
evidence the control does not show, and any malformed condition. Evaluation is a pure
function of the evidence numbers.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tether.errors import ConfigError
from tether.report.evidence import EVIDENCE, Evidence
from tether.report.mechanisms import MECHANISMS

MET, PARTLY, NOT_MET, OUT_OF_SCOPE = "met", "partly met", "not met", "out of scope"
STATUSES = (MET, PARTLY, NOT_MET, OUT_OF_SCOPE)
_RANK = {NOT_MET: 0, PARTLY: 1, MET: 2}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_COND = re.compile(r"^\s*([a-z_]+\.[a-z_0-9]+)\s*(==|!=|<=|>=|<|>)\s*(\S+)\s*$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_CONTROL_KEYS = {
    "id",
    "framework",
    "title",
    "mechanisms",
    "evidence",
    "met",
    "partly_met",
    "ceiling",
    "ceiling_reason",
    "status",
    "reason",
}


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    op: str
    value: float | bool | str  # str: another evidence key
    text: str

    def operands(self) -> tuple[str, ...]:
        return (self.key, self.value) if isinstance(self.value, str) else (self.key,)

    def holds(self, ev: Evidence) -> tuple[bool, str]:
        """(true?, why) — a condition on evidence without data never holds."""
        left = ev.value(self.key)
        right = ev.value(self.value) if isinstance(self.value, str) else self.value
        if left is None or right is None:
            return False, f"`{self.text}`: no data"
        ok = bool(_OPS[self.op](left, right))
        return ok, f"`{self.text}` ({self.key} = {_fmt(left)})"


@dataclass(frozen=True, slots=True)
class Control:
    id: str
    framework: str
    title: str
    mechanisms: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    met: tuple[Condition, ...] = ()
    partly_met: tuple[Condition, ...] = ()
    ceiling: str | None = None
    ceiling_reason: str = ""
    out_of_scope: str = ""  # the reason, when the control is out of scope


@dataclass(frozen=True, slots=True)
class Framework:
    id: str
    title: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class ControlMapping:
    version: int
    source: str
    frameworks: tuple[Framework, ...]
    controls: tuple[Control, ...]

    def control(self, control_id: str) -> Control | None:
        want = control_id.strip().casefold()
        return next((c for c in self.controls if c.id.casefold() == want), None)


@dataclass(frozen=True, slots=True)
class Result:
    control: Control
    status: str
    why: list[str] = field(default_factory=list)


def _fail(source: str, where: str, detail: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {detail}", code="mapping_invalid", file=source, entry=where)


def _condition(source: str, where: str, text: Any, shown: Sequence[str]) -> Condition:
    m = _COND.match(text) if isinstance(text, str) else None
    if m is None:
        raise _fail(source, where, f"`{text}` is not a condition like `credentials.issued > 0`")
    key, op, raw = m.groups()
    value: float | bool | str
    if raw in ("true", "false"):
        value = raw == "true"
    elif _NUMBER.match(raw):
        value = float(raw)
    else:
        value = raw
    c = Condition(key, op, value, text.strip())
    for k in c.operands():
        if k not in EVIDENCE:
            raise _fail(source, where, f"unknown evidence `{k}` in `{text}`")
        if k not in shown:
            raise _fail(
                source, where, f"`{text}` reads `{k}`, which the control does not list under `evidence`"
            )
    return c


def _strings(source: str, where: str, raw: Any, what: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise _fail(source, where, f"`{what}` must be a list of names")
    return tuple(raw)


def _control(source: str, raw: Any, n: int, frameworks: set[str]) -> Control:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"].strip():
        raise _fail(source, f"controls[{n}]", "every control needs an `id`")
    where = f"control `{raw['id']}`"
    unknown = sorted(set(raw) - _CONTROL_KEYS)
    if unknown:
        raise _fail(source, where, f"unknown field `{unknown[0]}`")
    for key in ("framework", "title"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise _fail(source, where, f"`{key}` is required")
    if raw["framework"] not in frameworks:
        raise _fail(source, where, f"unknown framework `{raw['framework']}`")
    if raw.get("status") is not None:
        if raw["status"] != "out_of_scope":
            raise _fail(source, where, "`status` may only be `out_of_scope`; other statuses come from rules")
        if not isinstance(raw.get("reason"), str) or not raw["reason"].strip():
            raise _fail(source, where, "an out-of-scope control needs its `reason`")
        if any(k in raw for k in ("met", "partly_met", "evidence", "mechanisms")):
            raise _fail(source, where, "an out-of-scope control has no mechanisms, evidence or rules")
        return Control(raw["id"], raw["framework"], raw["title"], out_of_scope=raw["reason"].strip())
    mechanisms = _strings(source, where, raw.get("mechanisms"), "mechanisms")
    for m in mechanisms:
        if m not in MECHANISMS:
            raise _fail(source, where, f"unknown mechanism `{m}`")
    shown = _strings(source, where, raw.get("evidence"), "evidence")
    for k in shown:
        if k not in EVIDENCE:
            raise _fail(source, where, f"unknown evidence `{k}`")
    if not mechanisms or not shown:
        raise _fail(source, where, "a control in scope needs `mechanisms` and `evidence`")
    rules = {}
    for name in ("met", "partly_met"):
        conds = raw.get(name)
        if not isinstance(conds, list) or not conds:
            raise _fail(source, where, f"`{name}` must be a non-empty list of conditions")
        rules[name] = tuple(_condition(source, f"{where} `{name}`", c, shown) for c in conds)
    ceiling = raw.get("ceiling")
    if ceiling is not None and ceiling != "partly_met":
        raise _fail(source, where, "`ceiling` may only be `partly_met`")
    if ceiling and not str(raw.get("ceiling_reason") or "").strip():
        raise _fail(source, where, "a `ceiling` needs its `ceiling_reason`")
    return Control(
        raw["id"],
        raw["framework"],
        raw["title"],
        mechanisms,
        shown,
        rules["met"],
        rules["partly_met"],
        PARTLY if ceiling else None,
        str(raw.get("ceiling_reason") or "").strip(),
    )


def parse_mapping(doc: Any, source: str) -> ControlMapping:
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise _fail(source, "top level", "expected a mapping with `version: 1`")
    fws_raw = doc.get("frameworks")
    if not isinstance(fws_raw, list) or not fws_raw:
        raise _fail(source, "top level", "`frameworks` must be a non-empty list")
    fws = []
    for i, f in enumerate(fws_raw):
        if not isinstance(f, dict) or not isinstance(f.get("id"), str) or not isinstance(f.get("title"), str):
            raise _fail(source, f"frameworks[{i}]", "needs `id` and `title`")
        fws.append(Framework(f["id"], f["title"], str(f.get("note") or "").strip()))
    ctl_raw = doc.get("controls")
    if not isinstance(ctl_raw, list) or not ctl_raw:
        raise _fail(source, "top level", "`controls` must be a non-empty list")
    known = {f.id for f in fws}
    controls = tuple(_control(source, c, i, known) for i, c in enumerate(ctl_raw))
    seen: set[str] = set()
    for c in controls:
        if c.id.casefold() in seen:
            raise _fail(source, f"control `{c.id}`", "listed twice")
        seen.add(c.id.casefold())
    return ControlMapping(1, source, tuple(fws), controls)


def load_mapping(path: Path | None = None) -> ControlMapping:
    """The shipped mapping, or the one at ``path``."""
    if path is None:
        text = resources.files("tether.report").joinpath("controls.yaml").read_text("utf-8")
        source = "tether/report/controls.yaml"
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read `{path}`: {exc.strerror}", code="mapping_invalid") from None
        source = str(path)
    try:
        # libyaml's safe loader when built in: the pure-Python one takes ~0.3 s on this file.
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML", code="mapping_invalid", file=source) from None
    return parse_mapping(doc, source)


def evaluate(control: Control, ev: Evidence) -> Result:
    """The control's status from its rules over ``ev``, with the reasons."""
    if control.out_of_scope:
        return Result(control, OUT_OF_SCOPE, [control.out_of_scope])
    status, why = NOT_MET, []
    for name, conds in ((MET, control.met), (PARTLY, control.partly_met)):
        checks = [c.holds(ev) for c in conds]
        if all(ok for ok, _ in checks):
            status = name
            why.append(f"{name}: " + "; ".join(w for _, w in checks))
            break
        why.append(f"{name} would need " + "; ".join(w for ok, w in checks if not ok))
    if status == MET and not any(ev.windowed_events(k) for k in control.evidence):
        # Nothing in the window backs the claim (e.g. only configuration was read).
        status, why = NOT_MET, ["no audit evidence in the window; `met` needs some"]
    if control.ceiling is not None and _RANK[status] > _RANK[control.ceiling]:
        status, why = control.ceiling, [*why, f"capped at {control.ceiling}: {control.ceiling_reason}"]
    return Result(control, status, why)


def evaluate_all(mapping: ControlMapping, ev: Evidence) -> list[Result]:
    return [evaluate(c, ev) for c in mapping.controls]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def counts(results: Sequence[Result]) -> Mapping[str, int]:
    return {s: sum(1 for r in results if r.status == s) for s in STATUSES}


__all__ = [
    "MET",
    "NOT_MET",
    "OUT_OF_SCOPE",
    "PARTLY",
    "STATUSES",
    "Condition",
    "Control",
    "ControlMapping",
    "Framework",
    "Result",
    "counts",
    "evaluate",
    "evaluate_all",
    "load_mapping",
    "parse_mapping",
]

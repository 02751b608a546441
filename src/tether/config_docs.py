"""Writes docs/configuration.md from the settings model itself.

    python -m tether.config_docs > docs/configuration.md     # regenerate
    python -m tether.config_docs --check docs/configuration.md   # exit 1 when stale

Every key of :class:`tether.config.Settings` (walked recursively through its nested
dataclasses), with its type, default and environment variable. A key's description is
the comment the code gives it: the ``#:`` lines above the field and the ``#`` comment on
its line. A test keeps the committed page equal to this output, so a new setting without
a regenerated page fails the suite.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from tether.config import CONFIG_FILE, Settings

_SKIP = {"state_dir"}  # a CLI flag / TETHER_STATE_DIR, not a key of the file


@dataclass(frozen=True, slots=True)
class Key:
    name: str  # dotted, e.g. `tasks.max_ttl_seconds`; `[]` marks a list of tables
    type: str
    default: str
    env: str
    doc: str


def _comments(cls: type) -> dict[str, str]:
    """Field name → the comment lines the source gives it (``#:`` above, ``#`` beside)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    out: dict[str, str] = {}
    body = ast.parse(src).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        parts: list[str] = []
        i = node.lineno - 2
        above: list[str] = []
        while i >= 0 and lines[i].strip().startswith("#:"):
            above.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        parts.extend(above)
        line = lines[node.lineno - 1]
        if "  # " in line:
            parts.append(line.split("  # ", 1)[1].strip())
        out[node.target.id] = " ".join(p for p in parts if p)
    return out


def _type(typ: Any) -> str:
    origin, args = get_origin(typ), get_args(typ)
    if typ is int:
        return "integer"
    if typ is float:
        return "number"
    if typ is bool:
        return "boolean"
    if typ is str:
        return "string"
    if origin is tuple and args and args[-1] is Ellipsis:
        inner = args[0]
        return "list of tables" if is_dataclass(inner) else f"list of {_type(inner)}s"
    if origin is Mapping or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return f"table of {_type(args[1])}s" if args else "table"
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return f"{_type(rest[0])} (optional)"
    return getattr(typ, "__name__", str(typ))


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _toml(value: Any) -> str:
    if value is MISSING:
        return "(required)"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '`""`' if value == "" else f'`"{value}"`'
    if isinstance(value, tuple | list):
        return "`[]`" if not value else "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, Mapping):
        return "`{}`" if not value else f"`{dict(value)}`"
    return f"`{value}`"


#: Sample values a validated list accepts (CIDRs, algorithms, …): the probe needs valid ones.
_SAMPLES = (("a", "b"), ("10.0.0.0/8", "10.1.0.0/16"), ("RS256", "ES256"), ("openid", "email"))


def _list_env_form(cls: type, name: str) -> str:
    """How the environment spells this list: probed on the real parser, not assumed."""
    import json

    for pair in _SAMPLES:
        for text, form in ((",".join(pair), "comma-separated"), (json.dumps(list(pair)), "a JSON list")):
            try:
                built = cls(**{name: text})
            except Exception:  # noqa: S112 - a refused sample only means: try the next form
                continue
            if tuple(getattr(built, name)) == pair:
                return form
    return "see its section"


def settings_keys(cls: type = Settings, prefix: str = "", env: str | None = "TETHER_") -> Iterator[Key]:
    """Every key under ``cls``; ``env=None`` inside lists of tables (file only)."""
    hints = get_type_hints(cls)
    docs = _comments(cls)
    for f in fields(cls):
        if f.name in _SKIP:
            continue
        typ = hints[f.name]
        name = f"{prefix}{f.name}"
        var = f"{env}{f.name.upper()}" if env is not None else None
        if is_dataclass(typ):
            yield from settings_keys(typ, name + ".", var + "__" if var else None)  # type: ignore[arg-type]
            continue
        args = get_args(typ)
        if get_origin(typ) is tuple and args and is_dataclass(args[0]):
            yield Key(name, "list of tables", "`[]`", "(file only)", docs.get(f.name, ""))
            yield from settings_keys(args[0], f"{name}[].", None)  # type: ignore[arg-type]
            continue
        shown = _type(typ)
        if var is None:
            env_text = "(file only)"
        elif shown.startswith("table of"):
            env_text = f"`{var}__<KEY>` (one per key; the key is lowercased)"
        elif shown.startswith("list of"):
            env_text = f"`{var}` ({_list_env_form(cls, f.name)})"
        else:
            env_text = f"`{var}`"
        yield Key(name, shown, _toml(_default(f)), env_text, docs.get(f.name, ""))


def _section(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m tether.config_docs > docs/configuration.md`; do not edit by",
        "hand (tests/core/test_config_docs.py fails when this page and the code disagree). -->",
        "",
        f"The broker reads its settings once at start, from `<state dir>/{CONFIG_FILE}` and from",
        "`TETHER_*` environment variables (built-in defaults < the file < the environment <",
        "command-line flags such as `tether serve --store/--listen`). An invalid value stops the",
        "process before it listens, with an error naming the key (`config_invalid`,",
        "docs/troubleshooting.md). Nested keys are TOML tables (`[tasks]` `max_ttl_seconds = 600`)",
        "and, in the environment, a double underscore (`TETHER_TASKS__MAX_TTL_SECONDS=600`).",
        "",
        "Outside this table: the state directory (`--state-dir`, or `TETHER_STATE_DIR`; default",
        "`.tether`) and the master key (`TETHER_MASTER_KEY`, 32 bytes base64url, or",
        "`<state dir>/master.key`, created 0600 on first start; docs/operations.md).",
        "Lists of tables (`[[trust_bundles]]`, `[[identity.oidc_issuers]]`, …) can only be set in",
        "the file. Descriptions are the code's own comments; where a key has none, its name and",
        "the page of its feature say what it does.",
        "",
    ]
    sections: dict[str, list[Key]] = {}
    for k in settings_keys():  # grouped by table, in the order the model declares them
        sections.setdefault(_section(k.name), []).append(k)
    for section, rows in sections.items():
        if not section:
            title = "Top level"
        elif section.endswith("[]"):
            title = f"`[[{section[:-2]}]]`"
        else:
            title = f"`[{section}]`"
        out += ["", f"## {title}", ""]
        out += ["| key | type | default | environment | description |", "|---|---|---|---|---|"]
        for k in rows:
            doc = k.doc.replace("|", "\\|").replace("``", "`")
            out.append(f"| `{k.name}` | {k.type} | {k.default} | {k.env} | {doc} |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if len(argv) == 2 and argv[0] == "--check":
        current = Path(argv[1]).read_text() if Path(argv[1]).exists() else ""
        if current != text:
            print(f"{argv[1]} is stale: run `python -m tether.config_docs > {argv[1]}`", file=sys.stderr)
            return 1
        return 0
    if argv:
        print("usage: python -m tether.config_docs [--check FILE]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

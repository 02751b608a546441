"""Imports follow the layering of docs/architecture.md: no module imports a layer above it.

    edge     cli, server, gateway, demo, testing, config_docs, runtime (the composition root), and each
             layer's HTTP routes / admin operations / wiring modules
    broker   broker, broker_base, decisions, credentials.introspection, seams (the
             protocols the broker and the edge are typed against)
    domain   policy, identity, credentials, audit, catalog, tokens, actions, arguments,
             replicas, leader (the periodic jobs' lease), legacy (secret scanning)
    store    store
    kernel   errors, model, config, config_console, linesocket, identity.spiffe_id, wire (the
             HTTP API's body models; pydantic, no web framework)
    client   sdk: imports only itself and the kernel's errors, model and linesocket

Every import counts, including ones inside functions and under ``TYPE_CHECKING``: a
type-only import is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import tether

SRC = Path(tether.__file__).parent

ORDER = ("kernel", "store", "domain", "broker", "edge")
# Most specific prefix wins.
RULES: dict[str, str] = {
    "tether": "kernel",  # the package root re-exports kernel names only
    "tether.errors": "kernel",
    "tether.model": "kernel",
    "tether.config": "kernel",
    "tether.linesocket": "kernel",
    "tether.identity.spiffe_id": "kernel",
    "tether.config_console": "kernel",
    "tether.config_ops": "kernel",
    "tether.tracing": "kernel",
    "tether.config_oauth": "kernel",
    "tether.wire": "kernel",
    "tether.config_docs": "edge",  # generates docs/configuration.md; nothing imports it
    "tether.store": "store",
    "tether.policy": "domain",
    "tether.identity": "domain",
    "tether.credentials": "domain",
    "tether.audit": "domain",
    "tether.catalog": "domain",
    "tether.tokens": "domain",
    "tether.actions": "domain",
    "tether.arguments": "domain",
    "tether.replicas": "domain",
    "tether.leader": "domain",
    "tether.metrics": "edge",
    "tether.legacy": "domain",
    "tether.legacy.ops": "edge",
    "tether.broker": "broker",
    "tether.broker_base": "broker",
    "tether.decisions": "broker",
    "tether.drift": "broker",
    "tether.credentials.introspection": "broker",
    "tether.oauth": "broker",
    "tether.oauth.server": "edge",
    "tether.oauth.consent": "edge",
    "tether.oauth.wiring": "edge",
    "tether.seams": "broker",
    "tether.runtime": "edge",
    "tether._main": "edge",
    "tether.cli": "edge",
    "tether.server": "edge",
    "tether.gateway": "edge",
    "tether.demo": "edge",
    "tether.testing": "edge",
    "tether.report": "edge",
    # Each layer's outward-facing parts live next to its logic but sit at the edge.
    "tether.identity.wiring": "edge",
    "tether.identity.admin_ops": "edge",
    "tether.credentials.wiring": "edge",
    "tether.credentials.api": "edge",
    "tether.credentials.ops": "edge",
    "tether.audit.wiring": "edge",
    "tether.sdk": "client",
}
#: What the client may import of the rest of the package (stdlib-only modules).
CLIENT_MAY_IMPORT = ("tether", "tether.errors", "tether.model", "tether.linesocket")


def layer(module: str) -> str:
    best = ""
    for prefix in RULES:
        # The package root names itself only: a new top-level module must be placed.
        nested = prefix != "tether" and module.startswith(prefix + ".")
        if (module == prefix or nested) and len(prefix) > len(best):
            best = prefix
    return RULES[best] if best else "unknown"


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from tether.x import y` may name a module `y`: count the deeper one.
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in out if name == "tether" or name.startswith("tether.")]


def _target(name: str, root: Path = SRC) -> str:
    """The module an imported name lives in (drop a trailing attribute name)."""
    candidate = name
    while candidate != "tether":
        rel = Path(*candidate.split(".")[1:])
        if (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists():
            return candidate
        candidate = candidate.rsplit(".", 1)[0]
    return "tether"


@functools.cache  # parsing every module once is enough for all the tests here
def violations(root: Path = SRC) -> tuple[str, ...]:
    found = []
    for path in sorted(root.rglob("*.py")):
        src = module_name(path, root)
        src_layer = layer(src)
        for line, name in imports(path):
            target = _target(name, root)
            tgt_layer = layer(target)
            where = (
                f"{path.relative_to(root.parent)}:{line} {src} ({src_layer}) imports {target} ({tgt_layer})"
            )
            if src_layer == "client":
                if tgt_layer != "client" and target not in CLIENT_MAY_IMPORT:
                    found.append(where)
            elif tgt_layer == "client":
                if src_layer != "edge":
                    found.append(where)
            elif ORDER.index(tgt_layer) > ORDER.index(src_layer):
                found.append(where)
    return tuple(found)


def test_every_module_has_a_layer():
    """A new top-level module or package is placed in a layer (add it to RULES and the doc)."""
    unknown = [module_name(p) for p in SRC.rglob("*.py") if layer(module_name(p)) == "unknown"]
    assert unknown == []


def _what(v: str) -> str:
    return v.split(" ", 1)[1]


def test_no_module_imports_a_layer_above_it():
    """cli/server/gateway → broker → policy/identity/credentials/audit → store → kernel."""
    assert violations() == ()


def test_the_checker_sees_the_two_violations_it_once_listed(tmp_path: Path):
    """The checker itself, on a small tree: a domain module importing the broker and a
    type-only import of the composition root are both violations; the kernel is not."""
    pkg = tmp_path / "tether"
    (pkg / "credentials").mkdir(parents=True)
    for name in ("__init__.py", "broker.py", "runtime.py", "model.py", "credentials/__init__.py"):
        (pkg / name).write_text("")
    (pkg / "credentials" / "service.py").write_text(
        "from tether.broker import AuthorizeRequest\nfrom tether.model import Task\n"
    )
    (pkg / "credentials" / "introspection.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tether.runtime import Core\n"
    )
    assert sorted(_what(v) for v in violations(pkg)) == [
        "tether.credentials.introspection (broker) imports tether.runtime (edge)",
        "tether.credentials.service (domain) imports tether.broker (broker)",
    ]


def test_the_client_imports_nothing_of_the_broker():
    """tether.sdk imports only itself and the stdlib-only kernel (errors, model, linesocket)."""
    client = [v for v in violations() if " (client) imports " in v]
    assert client == []

"""Admin operations of a policy change: shadow a candidate set, promote it.

``policy.shadow`` puts a candidate directory beside the enforced set (validated exactly
as a reload validates, so a bad directory is refused with the same message) or takes it
away; ``policy.promote`` makes the shadow set the enforced one by writing its files into
the policy directory and running the ordinary reload — if that reload refuses, the old
files are put back and the old set stays in force. Every change is an audit event.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.audit import event as ev
from tether.errors import Conflict, InvalidRequest, PolicyError
from tether.policy.analysis import load_checked
from tether.policy.loader import load_bundle
from tether.server.admin import OperationTable, Operator

if TYPE_CHECKING:
    from tether.runtime import Core, Runtime

OPERATIONS = OperationTable()
operation = OPERATIONS.operation


def shadow_status(core: Core) -> dict[str, Any]:
    engine = core.engine
    shadow = engine.shadow
    return {
        "enforced_version": engine.bundle.version,
        "shadow": engine.shadow_source,
        "shadow_version": shadow.version if shadow is not None else None,
        "counters": engine.shadow_counters.to_dict(),
    }


def set_shadow(core: Core, directory: Path | None, *, by: str) -> dict[str, Any]:
    """Shadow ``directory`` (``None``: shadow off); a directory that does not validate is
    refused with the reload's message, audited, and the previous shadow stays."""
    if directory is None:
        previous = core.engine.shadow_source
        core.engine.clear_shadow()
        with core.audit.unit() as u:
            u.emit(ev.POLICY_SHADOW_SET, {"state": "off", "previous": previous, "by": by})
        return shadow_status(core)
    try:
        # Exactly the reload's checks (and analysis warnings, which do not refuse).
        bundle, analysis = load_checked(directory, core.engine.schema, core.engine.catalog)
        core.engine.set_shadow(bundle, str(directory))
    except PolicyError as exc:
        with core.audit.unit() as u:
            u.emit(
                ev.POLICY_SHADOW_SET,
                {"state": "refused", "directory": str(directory), "error": exc.message, "by": by},
            )
        raise
    with core.audit.unit() as u:
        u.emit(
            ev.POLICY_SHADOW_SET,
            {
                "state": "on",
                "directory": str(directory),
                "version": bundle.version,
                "files": list(bundle.files),
                "enforced_version": core.engine.bundle.version,
                "by": by,
                **({"warnings": [w.to_dict() for w in analysis.warnings]} if analysis.warnings else {}),
            },
        )
    return {**shadow_status(core), "warnings": [w.describe() for w in analysis.warnings]}


def _write_files(target: Path, files: dict[str, bytes]) -> None:
    """Make ``target``'s ``*.cedar`` files exactly ``files``, each replaced atomically."""
    for name, data in files.items():
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".promote-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target / name)
    for p in target.glob("*.cedar"):
        if p.name not in files:
            p.unlink()


def promote(core: Core, *, by: str) -> dict[str, Any]:
    """Make the shadow set the enforced one through the reload path."""
    engine = core.engine
    source, shadow = engine.shadow_source, engine.shadow
    if source is None or shadow is None:
        raise Conflict(
            "no shadow policy set is in force; start one with `tether policy shadow DIR`",
            code="no_shadow",
        )
    candidate = load_bundle(Path(source), engine.schema)  # the reload's checks and messages
    if candidate.version != shadow.version:
        raise Conflict(
            f"`{source}` changed since it was put in shadow ({shadow.version} → {candidate.version}); "
            "shadow it again to watch the new version before promoting it",
            code="shadow_changed",
        )
    target = core.settings.policy_path
    previous = engine.bundle.version
    new = {p.name: p.read_bytes() for p in sorted(Path(source).glob("*.cedar")) if p.is_file()}
    old = {p.name: p.read_bytes() for p in sorted(target.glob("*.cedar")) if p.is_file()}
    if Path(source).resolve() != target.resolve():
        _write_files(target, new)
    try:
        version = core.reload_policy()
    except PolicyError:
        _write_files(target, old)  # the old set is still in force: make the files say so too
        raise
    if version != shadow.version:
        raise InvalidRequest(
            f"the policy directory loaded as {version}, not the shadow's {shadow.version}",
            code="promote_mismatch",
        )
    engine.clear_shadow()
    with core.audit.unit() as u:
        u.emit(
            ev.POLICY_SHADOW_SET,
            {"state": "promoted", "directory": source, "version": version, "previous": previous, "by": by},
        )
    return {"policy_version": version, "previous_version": previous, "promoted_from": source}


def start_shadow(core: Core) -> None:
    """``[policy] shadow`` at start: a directory that does not validate refuses to start."""
    path = core.settings.shadow_path
    if path is not None:
        set_shadow(core, path, by="config")


@operation("policy.shadow")
def policy_shadow(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    directory = args.get("directory")
    if directory is None:
        return shadow_status(rt)
    if not isinstance(directory, str) or not directory:
        raise InvalidRequest("`directory` must be a path or `off`", code="invalid_request", field="directory")
    if directory == "off":
        return set_shadow(rt, None, by=op.name)
    return set_shadow(rt, Path(directory), by=op.name)


@operation("policy.promote")
def policy_promote(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return promote(rt, by=op.name)

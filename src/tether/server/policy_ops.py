"""Admin operations of a policy change: shadow a candidate set, promote it.

``policy.shadow`` puts a candidate directory beside the enforced set (validated exactly
as a reload validates, so a bad directory is refused with the same message) or takes it
away; ``policy.promote`` makes the shadow set the enforced one by writing its files into
the policy directory and running the ordinary reload — if that reload refuses, the old
files are put back and the old set stays in force. Every change is an audit event.

Under ``tether serve --workers N`` the admin socket reaches worker 0 only;
:func:`across_workers` makes these operations (and ``policy.reload``) reach every worker
and say how many applied them.
"""

from __future__ import annotations

import logging
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
    from tether.server.worker_peers import PeerHandler, WorkerPeers

log = logging.getLogger("tether")

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


# -- across the workers of `tether serve --workers N` (tether.server.worker_peers) ---------


def _peer_reload(rt: Runtime, args: dict[str, Any]) -> dict[str, Any]:
    """A worker other than 0: put in force the set worker 0 just did (the same version, or
    nothing: ``Runtime.reload_policy``'s ``expect_version``)."""
    version = rt.reload_policy(strict=args.get("strict") is True, expect_version=str(args["expect_version"]))
    if args.get("clear_shadow") is True:  # a promotion: the shadow set is the enforced one now
        rt.engine.clear_shadow()
    return {"pid": os.getpid(), "policy_version": version}


def _peer_shadow(rt: Runtime, args: dict[str, Any]) -> dict[str, Any]:
    directory = args.get("directory")
    if directory is not None:
        set_shadow(rt, None if directory == "off" else Path(str(directory)), by=str(args.get("by", "")))
    return {"pid": os.getpid(), **shadow_status(rt)}


PEER_OPERATIONS: dict[str, PeerHandler] = {"policy.reload": _peer_reload, "policy.shadow": _peer_shadow}


def _report(local: dict[str, Any], answers: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """``{"total", "applied", "results"}``: worker 0's ``local`` and the others' answers; a
    worker counts as applied when it answered with worker 0's value of ``key``."""
    results = [{"worker": 0, "pid": os.getpid(), key: local[key]}]
    for a in answers:
        if not a.get("ok"):
            results.append({"worker": a["worker"], "error": a.get("error")})
        elif a["result"].get(key) != local[key]:
            message = f"worker {a['worker']} has {a['result'].get(key)}, worker 0 {local[key]}"
            code = "shadow_changed" if key == "shadow_version" else "policy_invalid"
            results.append({"worker": a["worker"], "pid": a["result"].get("pid"),
                            "error": {"code": code, "message": message}})  # fmt: skip
        else:
            results.append({"worker": a["worker"], "pid": a["result"].get("pid"), key: a["result"][key]})
    applied = sum(1 for r in results if "error" not in r)
    if applied < len(results):
        log.error("policy change applied on %d of %d workers: %s", applied, len(results), results)
    return {"total": len(results), "applied": applied, "results": results}


def _sum_counters(views: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"evaluated": 0, "diverged": 0, "by_kind": {}, "errors": 0}
    for c in views:
        for k in ("evaluated", "diverged", "errors"):
            total[k] += int(c.get(k, 0))
        for kind, n in (c.get("by_kind") or {}).items():
            total["by_kind"][kind] = total["by_kind"].get(kind, 0) + int(n)
    total["by_kind"] = dict(sorted(total["by_kind"].items()))
    return total


def across_workers(rt: Runtime, peers: WorkerPeers) -> None:
    """Worker 0 of ``--workers N``: ``policy.reload``, ``policy.promote`` and
    ``policy.shadow`` change every worker, not only the one serving the admin socket.

    Worker 0 applies the change first, so a candidate that does not validate is refused
    there and reaches no worker: the old set stays in force everywhere. The others then
    put in force exactly worker 0's version (a directory that changed in between is
    refused, not loaded). The reply says how many workers applied it (``workers``)."""
    ops = rt.operations
    local_reload, local_promote, local_shadow = (
        ops["policy.reload"],
        ops["policy.promote"],
        ops["policy.shadow"],
    )

    def reload(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
        result = dict(local_reload(rt, args, op))
        answers = peers.broadcast(
            "policy.reload",
            {"strict": args.get("strict") is True, "expect_version": result["policy_version"]},
        )
        result["workers"] = _report(result, answers, "policy_version")
        return result

    def promote(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
        result = dict(local_promote(rt, args, op))
        answers = peers.broadcast(
            "policy.reload", {"expect_version": result["policy_version"], "clear_shadow": True}
        )
        result["workers"] = _report(result, answers, "policy_version")
        return result

    def shadow(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
        result = dict(local_shadow(rt, args, op))
        directory = args.get("directory")
        answers = peers.broadcast("policy.shadow", {"directory": directory, "by": op.name})
        result["workers"] = _report(result, answers, "shadow_version")
        views = [result["counters"], *(a["result"]["counters"] for a in answers if a.get("ok"))]
        result["counters"] = _sum_counters(views)
        return result

    ops["policy.reload"], ops["policy.promote"], ops["policy.shadow"] = reload, promote, shadow

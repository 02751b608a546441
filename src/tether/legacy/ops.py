"""Admin-socket operations for legacy secrets: ``secrets.import|inventory|rotate``.

They run inside the broker (registered by ``tether.credentials.wiring``), so the value
goes straight into the encrypted store the gateway's ``inject`` credentials come from,
and every import and rotation lands in the audit log.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tether.audit import event as ev
from tether.credentials.connectors.inject import secret_name
from tether.credentials.secrets import MASK, check_name
from tether.errors import Conflict, InvalidRequest, NotFound, TetherError
from tether.legacy import inventory, rotate
from tether.legacy.engine import fingerprint
from tether.server.admin import OperationTable, Operator

if TYPE_CHECKING:
    from tether.runtime import Runtime

#: These admin operations (the credentials layer adds them to ``Runtime.operations``).
OPERATIONS = OperationTable()
operation = OPERATIONS.operation


def _secrets(rt: Runtime) -> Any:
    return rt.credentials.secrets


def _arg(args: dict[str, Any], key: str, required: bool = True) -> Any:
    v = args.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise InvalidRequest(f"missing argument `{key}`", code="missing_field", field=key)
    return v


@operation("secrets.import")
def secrets_import(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    service = _arg(args, "service")
    res = rt.catalog.get(service)
    if res is None or res.kind != "service":
        raise NotFound(f"no service `{service}` in the catalog", code="unknown_service")
    name = check_name(args.get("name") or secret_name(res))
    value = _arg(args, "value")
    fp = fingerprint(value)
    if args.get("fingerprint") not in (None, fp):
        raise Conflict("the value does not match the finding's fingerprint; re-run the scan",
                       code="fingerprint_mismatch")  # fmt: skip
    rotation = args.get("rotation")
    if rotation is not None:
        if not isinstance(rotation, dict):
            raise InvalidRequest("`rotation` must be an object", code="rotation_invalid", field="rotation")
        rotate.check_spec(rotation)
    exposures = [e for e in args.get("exposures") or [] if isinstance(e, dict)]
    _secrets(rt).set(name, value, header=_arg(args, "header", False) or "Authorization")
    with rt.audit.unit() as u:
        inventory.record_import(u.conn, name=name, service=service, kind=str(args.get("kind") or "manual"),
                                fingerprint=fp, exposures=exposures, first_seen=args.get("first_seen"),
                                rotation=rotation)  # fmt: skip
        live = sum(1 for e in exposures if e.get("live"))
        u.emit(ev.SECRET_IMPORTED, {"name": name, "service": service, "fingerprint": fp, "by": op.name,
                                    "exposures_live": live})  # fmt: skip
    return {"name": name, "service": service, "fingerprint": fp, "connector": res.connector}


@operation("secrets.inventory")
def secrets_inventory(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    with rt.db.read() as conn:
        return inventory.listing(conn)


@operation("secrets.rotate")
def secrets_rotate(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return rotate_now(rt, _secrets(rt), check_name(_arg(args, "name")), op.name)


def rotate_now(rt: Any, store: Any, name: str, by: str) -> dict[str, Any]:
    """One rotation of ``name`` (``rt`` needs ``db`` and ``audit``): audited either way."""
    with rt.db.read() as conn:
        row = inventory.get(conn, name)
    if row is None or not row["rotation"]:
        raise NotFound(f"secret `{name}` has no rotation configured; import it with `--rotate-…`",
                       code="rotation_not_configured")  # fmt: skip
    header, old = store.get(name)
    seen: list[str] = [old]

    def scrub(text: str) -> str:
        for v in seen:
            text = text.replace(v, MASK)
        return text

    def switch(new: str) -> None:
        store.set(name, new, header=header)

    try:
        rotator = rotate.rotator_for(row["rotation"])
        outcome = rotate.rotate(_Watch(rotator, seen), old, switch)
    except (rotate.RotationFailed, TetherError) as exc:
        stage = exc.stage if isinstance(exc, rotate.RotationFailed) else "config"
        reason = scrub(exc.reason if isinstance(exc, rotate.RotationFailed) else exc.message)
        with rt.audit.unit() as u:
            inventory.set_rotation(u.conn, name, "failed", f"{stage}: {reason}", None)
            u.emit(ev.SECRET_ROTATION_FAILED, {"name": name, "stage": stage, "reason": reason, "by": by})
        raise Conflict(f"rotation of `{name}` failed at {stage}: {reason}; the previous secret is still "
                       "in use", code="rotation_failed") from None  # fmt: skip
    fp = fingerprint(outcome.new)
    err = scrub(outcome.error) if outcome.error else None
    with rt.audit.unit() as u:
        inventory.set_rotation(u.conn, name, outcome.status, err and f"retire: {err}", fp)
        u.emit(ev.SECRET_ROTATED if outcome.status == "ok" else ev.SECRET_ROTATION_FAILED,
               {"name": name, "status": outcome.status, "fingerprint": fp, "stage": "retire" if err else None,
                "reason": err, "by": by})  # fmt: skip
    return {"name": name, "status": outcome.status, "fingerprint": fp, "error": err}


SCHEDULE_CHECK_SECONDS = 60.0
RETRY_AFTER_FAILURE_SECONDS = 3600.0


def scheduled_rotation(rt: Any, store: Any) -> Any:
    """A periodic job (``rt.periodic``): rotate secrets whose spec has ``every_days`` when due.

    Checked at most once a minute; a failed rotation is retried an hour later, not every tick
    (each attempt is audited)."""
    log = logging.getLogger("tether.legacy")
    state = {"next": 0.0}
    failed_at: dict[str, float] = {}

    def job() -> None:
        now = time.monotonic()
        if now < state["next"]:
            return
        state["next"] = now + SCHEDULE_CHECK_SECONDS
        with rt.db.read() as conn:
            rows = inventory.listing(conn)
        for r in rows:
            every = (r["rotation_spec"] or {}).get("every_days") if r.get("rotation_spec") else None
            if not every or (time.time() - r["value_since"]) / 86400 < float(every):
                continue
            if now - failed_at.get(r["name"], -1e18) < RETRY_AFTER_FAILURE_SECONDS:
                continue
            try:
                rotate_now(rt, store, r["name"], "schedule")
                failed_at.pop(r["name"], None)
            except TetherError as exc:
                failed_at[r["name"]] = now
                log.warning("scheduled rotation of %s failed: %s", r["name"], exc.code)

    return job


class _Watch:
    """Remembers every value a rotator produced so failure reasons can be scrubbed of them."""

    def __init__(self, inner: rotate.Rotator, seen: list[str]) -> None:
        self._inner, self._seen = inner, seen

    def create(self, old: str) -> str:
        new = self._inner.create(old)
        self._seen.append(new)
        return new

    def verify(self, new: str) -> None:
        self._inner.verify(new)

    def undo(self, old: str) -> None:
        self._inner.undo(old)

    def retire(self, old: str, new: str) -> None:
        self._inner.retire(old, new)

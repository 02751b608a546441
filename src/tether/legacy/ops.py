"""Admin-socket operations for legacy secrets: ``secrets.import|inventory|rotate``.

They run inside the broker (registered by ``tether.credentials.wiring``), so the value
goes straight into the encrypted store the gateway's ``inject`` credentials come from,
and every import and rotation lands in the audit log.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

import psycopg

from tether.audit import event as ev
from tether.credentials.connectors.inject import secret_name
from tether.credentials.secrets import MASK, check_name
from tether.errors import Conflict, InvalidRequest, NotFound, TetherError
from tether.legacy import inventory, pgshared, rotate
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
    if row["rotation"].get("kind") == "postgres-shared":
        raise Conflict(
            f"`{name}` is a shared PostgreSQL login: retire it with `tether secrets pg-retire {name}`",
            code="rotation_not_configured",
        )
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


# -- shared PostgreSQL logins (`tether secrets pg-import|pg-usage|pg-retire`) ----------------
_ALL_PRIVS = ["DELETE", "INSERT", "SELECT", "UPDATE"]


def _pg(rt: Runtime) -> Any:
    connector = rt.credentials.service.connectors.get("postgres")
    if connector is None:
        raise NotFound(
            "the broker has no postgres connector: add `[credentials.postgres]` with the "
            "service's admin connection to tether.toml",
            code="connector_misconfigured",
        )
    return connector


def _shared_resources(rt: Runtime, service: str, login: str) -> list[Any]:
    res = rt.catalog.get(service)
    if res is None or res.kind != "service":
        raise NotFound(f"no service `{service}` in the catalog", code="unknown_service", field="service")
    if res.connector != "postgres":
        raise InvalidRequest(
            f"service `{service}` uses connector `{res.connector}`, not `postgres`",
            code="not_a_postgres_service",
            field="service",
        )
    found = [
        r
        for r in rt.catalog.resources.values()
        if r.service == service and r.options.get("shared_login") == login
    ]
    if not found:
        raise Conflict(
            f"the catalog does not hand out `{login}`'s privileges yet: add `shared_login: {login}` "
            f"to the `options` of service `{service}` (or of its datasets) in "
            f"{rt.settings.catalog_path.name} and restart the broker",
            code="shared_login_not_in_catalog",
            field="login",
        )
    return found


def pg_name(service: str, login: str) -> str:
    """The inventory name of a shared login (no value is stored under it)."""
    return check_name(re.sub(r"[^A-Za-z0-9._-]", "_", f"pg.{service}.{login}")[:128])


@operation("secrets.pg_import")
def secrets_pg_import(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    service, login = _arg(args, "service"), _arg(args, "login")
    password = args.get("password") if isinstance(args.get("password"), str) else None
    resources = _shared_resources(rt, service, login)
    fp = fingerprint(password) if password else ""
    if args.get("fingerprint") not in (None, fp):
        raise Conflict(
            "the password does not match the finding's fingerprint; re-run the scan",
            code="fingerprint_mismatch",
        )
    pg = _pg(rt)
    if password and not pg.login_works(service, login, password):
        raise Conflict(
            f"the password found for `{login}` does not log in to `{service}`'s database: it may "
            "already be rotated, or belong to another server",
            code="shared_login_refused",
        )

    def prepare(conn: Any) -> dict[str, Any]:
        info = pgshared.inspect_login(conn, login)
        if not info["admin_member"]:
            try:
                pgshared.join_login(conn, login)
            except psycopg.Error as exc:
                raise Conflict(
                    f"the admin could not become a member of `{login}` (sqlstate {exc.sqlstate}): "
                    f"as a superuser run `GRANT {login} TO <admin> WITH ADMIN OPTION` "
                    "(PostgreSQL 16+), then import again",
                    code="connector_misconfigured",
                ) from None
        return info

    info = pg.on_target(service, f"inspect `{login}`", prepare)
    copies = []
    for r in resources:
        tables = sorted({str(t) for t in r.options.get("tables") or []})
        schemas = sorted({str(s) for s in r.options.get("schemas") or []})
        group, copy = pg.shared_group(service, login, _ALL_PRIVS, tables, schemas)
        by_table: dict[str, list[str]] = {}
        for schema, table, priv in copy:
            by_table.setdefault(f"{schema}.{table}", []).append(priv)
        copies.append(
            {
                "resource": r.id,
                "group": group,
                "tables": [{"table": k, "privileges": v} for k, v in sorted(by_table.items())],
            }
        )
    report = pg.on_target(service, "read pg_stat_activity", lambda c: pgshared.usage(c, login))
    name = pg_name(service, login)
    exposures = [e for e in args.get("exposures") or [] if isinstance(e, dict)]
    spec = {"kind": "postgres-shared", "service": service, "login": login}
    with rt.audit.unit() as u:
        inventory.record_import(
            u.conn,
            name=name,
            service=service,
            kind="PostgreSQL shared login",
            fingerprint=fp,
            exposures=exposures,
            first_seen=args.get("first_seen"),
            rotation=spec,
        )
        inventory.record_sightings(u.conn, name, report["clients"], time.time())
        u.emit(
            ev.SECRET_IMPORTED,
            {
                "name": name,
                "service": service,
                "fingerprint": fp or None,
                "by": op.name,
                "exposures_live": sum(1 for e in exposures if e.get("live")),
                "mode": "postgres-shared",
                "login": login,
                "sessions": report["sessions"],
            },
        )
    return {
        "name": name,
        "service": service,
        "login": login,
        "fingerprint": fp or None,
        "admin_joined": not info["admin_member"],
        "copies": copies,
        "usage": report,
    }


def _login_of(rt: Runtime, args: dict[str, Any]) -> tuple[str, str, str]:
    name = check_name(_arg(args, "name"))
    with rt.db.read() as conn:
        row = inventory.get(conn, name)
    spec = (row or {}).get("rotation") or {}
    if spec.get("kind") != "postgres-shared":
        raise NotFound(
            f"no shared PostgreSQL login `{name}`; import it with `tether secrets pg-import`",
            code="shared_login_not_found",
            field="name",
        )
    return name, str(spec["service"]), str(spec["login"])


@operation("secrets.pg_usage")
def secrets_pg_usage(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    name, service, login = _login_of(rt, args)
    report = _sample(rt, name, service, login)
    with rt.db.read() as conn:
        seen = inventory.sightings(conn, name)
        since = (inventory.get(conn, name) or {}).get("imported_at")
    blocker = pgshared.in_use(report)
    return {
        **report,
        "name": name,
        "service": service,
        "safe_to_retire": blocker is None,
        "blocker": blocker,
        "seen": seen,
        "sampled_since": since,
        "sample_every_s": SAMPLE_SECONDS,
    }


SAMPLE_SECONDS = 60.0


def _sample(rt: Runtime, name: str, service: str, login: str) -> dict[str, Any]:
    """One ``pg_stat_activity`` snapshot of ``login``, folded into its sighting history."""
    report: dict[str, Any] = _pg(rt).on_target(
        service, "read pg_stat_activity", lambda c: pgshared.usage(c, login)
    )
    if report["clients"]:
        with rt.db.begin() as conn:
            inventory.record_sightings(conn, name, report["clients"], time.time())
    return report


def sample_shared_logins(rt: Any) -> Any:
    """A periodic job (``rt.periodic``): each minute, who is connected with each imported shared
    login that is not retired yet. Gives ``pg-usage`` a history without server logs; a target
    that cannot be read is skipped (and logged) until the next minute."""
    log = logging.getLogger("tether.legacy")
    state = {"next": 0.0}

    def job() -> None:
        now = time.monotonic()
        if now < state["next"]:
            return
        state["next"] = now + SAMPLE_SECONDS
        with rt.db.read() as conn:
            watched = inventory.shared_logins(conn)
        for w in watched:
            try:
                _sample(rt, w["name"], w["service"], w["login"])
            except TetherError as exc:
                log.warning("could not sample the sessions of %s: %s", w["name"], exc.code)

    return job


@operation("secrets.pg_retire")
def secrets_pg_retire(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    name, service, login = _login_of(rt, args)
    force = args.get("force") is True
    pg = _pg(rt)
    report = pg.on_target(service, "read pg_stat_activity", lambda c: pgshared.usage(c, login))
    blocker = pgshared.in_use(report)
    if blocker and not force:
        raise Conflict(
            f"{blocker}: move them to the gateway first, or retire with --force (their sessions are ended)",
            code="shared_login_in_use",
        )
    ended = pg.on_target(service, f"retire `{login}`", lambda c: pgshared.retire(c, login, terminate=force))
    with rt.audit.unit() as u:
        inventory.set_rotation(u.conn, name, "retired", None, None)
        u.emit(
            ev.SECRET_ROTATED,
            {
                "name": name,
                "status": "retired",
                "login": login,
                "by": op.name,
                "sessions_ended": ended,
                "forced": force,
            },
        )
    return {"name": name, "service": service, "login": login, "status": "retired", "sessions_ended": ended}

"""Legacy shared PostgreSQL logins: who still uses one, and retiring it.

A shared login (``app`` in ``postgresql://app:pw@db/prod``, found by ``tether secrets
scan`` or named by the operator) is imported by naming it in the catalog
(``options.shared_login``): from then on the ``postgres`` connector mints each task its own
short-lived role carrying a copy of the login's privileges (see
``tether.credentials.connectors.postgres.PostgresConnector.shared_group``). The login itself
keeps working until it is retired; the usage report says who still connects with it.

Evidence without server logs: ``pg_stat_activity`` (sessions open now: database, client
address, application_name, since when, last active) and, where the extension is loaded,
``pg_stat_statements`` (statements run as the login since the statistics were reset, which
catches short connections a snapshot misses). Each function takes an admin connection in
autocommit mode and runs only fixed SQL with bound parameters.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import psycopg
from psycopg import sql

from tether.credentials.connectors.postgres import ROLE_PREFIX, scram_verifier
from tether.errors import Conflict, InvalidRequest, NotFound


def _ts(v: Any) -> float | None:
    return v.timestamp() if isinstance(v, dt.datetime) else None


def inspect_login(conn: psycopg.Connection[Any], login: str) -> dict[str, Any]:
    """The login's attributes, or ``unknown_role``; refuses what must not be imported."""
    if login.startswith((ROLE_PREFIX, "tether_g_", "tether_s_")):
        raise InvalidRequest(
            f"`{login}` is a role Tether minted, not a legacy login", code="not_a_legacy_login", field="login"
        )
    row = conn.execute(
        "SELECT rolsuper, rolcanlogin, rolvaliduntil, pg_has_role(current_user, oid, 'USAGE'), "
        "rolname = current_user FROM pg_roles WHERE rolname = %s",
        (login,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no role `{login}` on the service's server", code="unknown_role", field="login")
    if row[4]:
        raise InvalidRequest(
            f"`{login}` is the connector's own admin role", code="not_a_legacy_login", field="login"
        )
    if row[0]:
        raise Conflict(
            f"`{login}` is a superuser: its privileges cannot be copied to per-task roles; "
            "give the application ordinary grants first",
            code="shared_login_superuser",
        )
    return {
        "login": login,
        "can_login": bool(row[1]),
        "valid_until": _ts(row[2]),
        "admin_member": bool(row[3]),
    }


def join_login(conn: psycopg.Connection[Any], login: str) -> None:
    """Make the admin a member of the login (``GRANT login TO CURRENT_USER``): it may then
    grant the privileges the login holds as owner, and read its sessions' addresses. On
    PostgreSQL 16+ this needs ADMIN OPTION on the login (``CREATEROLE`` alone is enough on 15)."""
    conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(login)))


def usage(conn: psycopg.Connection[Any], login: str) -> dict[str, Any]:
    """Sessions open now, grouped by (database, client, application), and statement counts."""
    rows = conn.execute(
        "SELECT datname, host(client_addr), client_hostname, application_name, backend_start, "
        "greatest(state_change, query_start, backend_start), state, backend_start IS NULL "
        "FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
        (login,),
    ).fetchall()
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    hidden = 0
    for db, addr, hostname, app, started, active, state, masked in rows:
        hidden += bool(masked)
        client = "(hidden)" if masked else (addr or hostname or "local socket")
        key = (str(db or "-"), str(client), str(app or ""))
        g = groups.setdefault(
            key,
            {
                "database": key[0],
                "client": key[1],
                "application": key[2],
                "sessions": 0,
                "since": None,
                "last_active": None,
                "active": 0,
            },
        )
        g["sessions"] += 1
        g["active"] += state == "active"
        for k, v, pick in (("since", _ts(started), min), ("last_active", _ts(active), max)):
            if v is not None:
                g[k] = v if g[k] is None else pick(g[k], v)
    out: dict[str, Any] = {
        "login": login,
        "sessions": len(rows),
        "clients": sorted(groups.values(), key=lambda g: (-(g["last_active"] or 0), g["client"])),
        "hidden": hidden,
        "statements": statements(conn, login),
    }
    if hidden:
        out["hint"] = (
            f"{hidden} session(s) hide their client and times: the admin sees them as a member of "
            f"`{login}` (`tether secrets pg-import` makes it one) or of pg_read_all_stats"
        )
    return out


def statements(conn: psycopg.Connection[Any], login: str) -> dict[str, Any]:
    """Calls by the login in ``pg_stat_statements`` since its reset, or why there are none."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone() is None:
        return {
            "available": False,
            "reason": "pg_stat_statements is not installed in this database "
            "(shared_preload_libraries + CREATE EXTENSION give evidence between snapshots)",
        }
    try:
        with conn.transaction():
            calls, kinds = conn.execute(
                "SELECT coalesce(sum(s.calls), 0), count(*) FROM pg_stat_statements s "
                "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = %s",
                (login,),
            ).fetchone() or (0, 0)
            reset = conn.execute("SELECT stats_reset FROM pg_stat_statements_info").fetchone()
    except psycopg.Error as exc:  # e.g. installed but not preloaded (SQLSTATE 55000)
        return {"available": False, "reason": f"pg_stat_statements cannot be read (sqlstate {exc.sqlstate})"}
    return {
        "available": True,
        "calls": int(calls),
        "statements": int(kinds),
        "since": _ts(reset[0]) if reset else None,
    }


def in_use(report: dict[str, Any]) -> str | None:
    """Why the login must not be retired yet, or None."""
    if report["sessions"]:
        first = report["clients"][0]
        return (
            f"{report['sessions']} session(s) still use `{report['login']}` (e.g. {first['client']}"
            + (f", application `{first['application']}`" if first["application"] else "")
            + ")"
        )
    return None


def retire(conn: psycopg.Connection[Any], login: str, *, terminate: bool) -> int:
    """``NOLOGIN`` and a random password no one holds, committed; then (``terminate``) end
    the sessions still open. Returns how many were ended. The login's grants stay: the
    per-task roles' copies come from them. Undo: ``ALTER ROLE … LOGIN PASSWORD '…'``."""
    verifier = scram_verifier(secrets.token_urlsafe(32))
    conn.execute(
        sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD {}").format(sql.Identifier(login), sql.Literal(verifier))
    )
    if not terminate:
        return 0
    row = conn.execute(
        "SELECT count(pg_terminate_backend(pid, 1000)) FROM pg_stat_activity "
        "WHERE usename = %s AND pid <> pg_backend_pid()",
        (login,),
    ).fetchone()
    return int(row[0]) if row else 0

"""Does the admin role of a ``postgres`` target have what minting AND revoking need?

``tether connectors check`` runs this before the first mint. Each check says what it
found and, when something is missing, the statement that fixes it. The last check is a
live probe: the whole life of a role (create, join, ``NOLOGIN``, ``REASSIGN OWNED``,
``DROP OWNED``, ``DROP ROLE``) inside one transaction that is rolled back — the server's
own answer, for whichever PostgreSQL version it is.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from tether.catalog import Resource
from tether.credentials.connectors import pgsql
from tether.credentials.connectors.pgpool import with_timeouts
from tether.credentials.connectors.postgres import libpq_dsn

OK, WARN, FAIL = "ok", "warn", "fail"
_OPTIONAL_PRIVS = ("INSERT", "UPDATE", "DELETE")  # only for `write` / `delete` actions


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class TargetReport:
    connector: str
    service: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    def to_dict(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "service": self.service,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
        }


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _state(exc: Exception) -> str:
    return f"{type(exc).__name__}, sqlstate {getattr(exc, 'sqlstate', None) or '-'}"


def check_postgres(
    service: str, dsn: str, resources: Sequence[Resource], *, probe: bool = True
) -> TargetReport:
    rep = TargetReport("postgres", service)
    try:
        conn = psycopg.connect(with_timeouts(libpq_dsn(dsn)), autocommit=True)
    except psycopg.Error as exc:
        rep.add(
            "connect",
            FAIL,
            f"cannot connect ({_state(exc)})",
            f"check `credentials.postgres.{service}`: host, port, database, user and password",
        )
        return rep
    with conn:
        _checks(rep, conn, resources, probe)
    return rep


def _checks(
    rep: TargetReport, conn: psycopg.Connection[Any], resources: Sequence[Resource], probe: bool
) -> None:
    row = conn.execute(
        "SELECT current_user, current_database(), current_setting('server_version_num')::int, "
        "rolsuper, rolcreaterole, rolinherit FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    admin, db, version, superuser, createrole, inherit = row
    rep.add("connect", OK, f"connected to `{db}` as `{admin}`")
    major = version // 10000
    if major < 14:
        rep.add("server", FAIL, f"PostgreSQL {major}", "PostgreSQL 14 or newer is needed (15/16+ are tested)")
    else:
        rep.add("server", OK, f"PostgreSQL {major}")
    if superuser:
        rep.add(
            "admin role",
            WARN,
            f"`{admin}` is a superuser: it works, but it is far more than Tether needs",
            "create a NOSUPERUSER role: CREATE ROLE tether_admin LOGIN CREATEROLE INHERIT PASSWORD '…'",
        )
    else:
        missing = [a for a, have in (("CREATEROLE", createrole), ("INHERIT", inherit)) if not have]
        if missing:
            rep.add(
                "admin role",
                FAIL,
                f"`{admin}` lacks {' and '.join(missing)}: it could not "
                + (
                    "create roles" if not createrole else "act for the roles it creates (REASSIGN/DROP OWNED)"
                ),
                f"ALTER ROLE {_ident(admin)} {' '.join(missing)}",
            )
        else:
            rep.add("admin role", OK, f"`{admin}` is NOSUPERUSER with CREATEROLE and INHERIT")
    public_connect = conn.execute(
        "SELECT has_database_privilege('public', current_database(), 'CONNECT')"
    ).fetchone()
    if public_connect and public_connect[0]:
        rep.add("database", OK, f"minted roles may connect to `{db}` (CONNECT is granted to PUBLIC)")
    else:
        rep.add(
            "database",
            FAIL,
            f"PUBLIC has no CONNECT on `{db}`: the roles Tether mints could not log in",
            f"GRANT CONNECT ON DATABASE {_ident(db)} TO PUBLIC",
        )
    _objects(rep, conn, admin, resources)
    _shared_logins(rep, conn, admin, resources)
    if probe:
        _probe(rep, conn)


def _objects(
    rep: TargetReport, conn: psycopg.Connection[Any], admin: str, resources: Sequence[Resource]
) -> None:
    tables: dict[str, list[str]] = {}  # table → catalog entries naming it
    schemas: dict[str, list[str]] = {}
    for res in resources:
        for t in res.options.get("tables") or []:
            tables.setdefault(str(t), []).append(res.id)
        for s in res.options.get("schemas") or []:
            schemas.setdefault(str(s), []).append(res.id)
    if not tables and not schemas:
        if not any(r.options.get("shared_login") for r in resources):
            rep.add("catalog", WARN, "no catalog entry of this service names `tables` or `schemas`")
        return
    for schema in sorted(set(schemas) | {t.partition(".")[0] for t in tables if "." in t}):
        grantable, public = conn.execute(
            "SELECT has_schema_privilege(current_user, n.oid, 'USAGE WITH GRANT OPTION'), "
            "has_schema_privilege('public', n.oid, 'USAGE') FROM pg_namespace n WHERE nspname = %s",
            (schema,),
        ).fetchone() or (None, None)
        if grantable is None:
            rep.add(f"schema {schema}", FAIL, f"schema `{schema}` does not exist", "fix the catalog entry")
        elif grantable:
            rep.add(f"schema {schema}", OK, "USAGE is grantable")
        elif public:
            rep.add(
                f"schema {schema}", OK, "USAGE comes from PUBLIC (not grantable by the admin; not needed)"
            )
        else:
            rep.add(
                f"schema {schema}",
                FAIL,
                f"`{admin}` cannot grant USAGE on `{schema}`",
                f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(admin)} WITH GRANT OPTION",
            )
    for schema in sorted(schemas):
        for (name,) in conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
            "WHERE schemaname = %s ORDER BY 1",
            (schema,),
        ).fetchall():
            tables.setdefault(str(name), []).extend(schemas[schema])
    for table in sorted(tables):
        where = ", ".join(sorted(set(tables[table])))
        try:
            found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        except psycopg.Error:  # not even a valid name (quotes, semicolons…)
            found = None
        if found in (None, (None,)):
            rep.add(f"table {table}", FAIL, f"does not exist (named by {where})", "fix the catalog entry")
            continue
        have = {
            p: bool(
                (
                    conn.execute(
                        "SELECT has_table_privilege(%s, %s)", (table, f"{p} WITH GRANT OPTION")
                    ).fetchone()
                    or [0]
                )[0]
            )
            for p in ("SELECT", *_OPTIONAL_PRIVS)
        }
        fix = (
            f"ALTER TABLE {table} OWNER TO {_ident(admin)}  "
            f"(or GRANT … ON {table} TO {_ident(admin)} WITH GRANT OPTION)"
        )
        if not have["SELECT"]:
            rep.add(f"table {table}", FAIL, f"`{admin}` cannot grant SELECT (named by {where})", fix)
        elif not all(have.values()):
            lacking = ", ".join(p for p, v in have.items() if not v)
            rep.add(
                f"table {table}",
                WARN,
                f"cannot grant {lacking}: `write`/`delete` credentials would fail",
                fix,
            )
        else:
            rep.add(f"table {table}", OK, "SELECT, INSERT, UPDATE, DELETE grantable")


_PROBE_STEPS = (
    ("create a role", "CREATE ROLE {r} NOLOGIN", "ALTER ROLE {a} CREATEROLE"),
    (
        "join it (for REASSIGN/DROP OWNED and ending its sessions)",
        "GRANT {r} TO CURRENT_USER",
        "ALTER ROLE {a} CREATEROLE",
    ),
    ("cut it (NOLOGIN)", "ALTER ROLE {r} NOLOGIN", "ALTER ROLE {a} CREATEROLE"),
    ("REASSIGN OWNED", "REASSIGN OWNED BY {r} TO CURRENT_USER", "ALTER ROLE {a} INHERIT"),
    ("DROP OWNED", "DROP OWNED BY {r}", "ALTER ROLE {a} INHERIT"),
    ("DROP ROLE", "DROP ROLE {r}", "ALTER ROLE {a} CREATEROLE"),
)


def _probe(rep: TargetReport, conn: psycopg.Connection[Any]) -> None:
    """The whole life of a role, rolled back: what the server says, step by step."""
    role = "tether_l_probe" + secrets.token_hex(6)
    admin = str((conn.execute("SELECT current_user").fetchone() or [""])[0])
    conn.execute("BEGIN")
    try:
        for step, stmt, fix in _PROBE_STEPS:
            try:
                conn.execute(sql.SQL(stmt).format(r=sql.Identifier(role), a=sql.Identifier(admin)))
            except psycopg.Error as exc:
                rep.add("probe", FAIL, f"could not {step} ({_state(exc)})", fix.format(a=_ident(admin)))
                return
        rep.add("probe", OK, "created, joined, cut and dropped a role (rolled back)")
    finally:
        conn.execute("ROLLBACK")


def _shared_logins(
    rep: TargetReport, conn: psycopg.Connection[Any], admin: str, resources: Sequence[Resource]
) -> None:
    """Entries with ``shared_login``: the login exists, is no superuser, and every privilege
    of its copy is one the admin may pass on."""
    for res in resources:
        login = str(res.options.get("shared_login") or "")
        if not login:
            continue
        what = f"shared login {login}"
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
        if row is None or row[0]:
            why = "does not exist" if row is None else "is a superuser (its privileges are not grants)"
            rep.add(what, FAIL, f"`{login}` (named by {res.id}) {why}", "fix the catalog entry")
            continue
        tables = sorted({str(t) for t in res.options.get("tables") or []})
        schemas = sorted({str(x) for x in res.options.get("schemas") or []})
        rows = conn.execute(
            pgsql.shared_privileges(login, ["DELETE", "INSERT", "SELECT", "UPDATE"], tables, schemas)
        ).fetchall()
        stuck = [f"{r[2]} on {r[0]}.{r[1]}" for r in rows if not r[3]]
        if not rows:
            rep.add(what, WARN, f"`{login}` holds no table privilege {res.id} could copy")
        elif stuck:
            rep.add(what, FAIL, f"`{admin}` cannot pass on {stuck[0]} ({len(stuck)} in all)",
                    f"tether secrets pg-import --login {login} --service {res.service}")  # fmt: skip
        else:
            rep.add(what, OK, f"{len(rows)} privilege(s) of `{login}` copied to per-task roles of {res.id}")

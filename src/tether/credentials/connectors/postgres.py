"""The ``postgres`` connector: a real, short-lived PostgreSQL login role per lease.

Catalog options (on the service or the dataset)::

    options:
      tables: [public.orders]      # schema.table; granted per action (read → SELECT, …)
      schemas: [reporting]         # every table in the schema
      agent_host: db.internal      # what the agent connects to, when not the admin host
      agent_port: 5432

Minting runs in ONE transaction on the target database: ``CREATE ROLE … LOGIN PASSWORD
… VALID UNTIL <lease expiry>``, a ``COMMENT`` tagging it as this broker's, and the
grants; PostgreSQL DDL is transactional, so the role exists with all its grants or not at
all. The password goes to the server as a SCRAM verifier, so the plaintext never reaches
the server's statement log. Every identifier goes through ``psycopg.sql.Identifier`` and
every value through ``sql.Literal``: a catalog or request value with quotes or
semicolons is just an odd (and missing) name, never SQL.

Revocation: ``NOLOGIN`` (no new sessions), terminate its sessions (``VALID UNTIL`` does
not end a session already open), then ``REASSIGN OWNED`` to the admin, ``DROP OWNED``
(grants it holds) and ``DROP ROLE``. The admin role needs ``CREATEROLE`` and the right
to grant on the named tables (``GRANT … WITH GRANT OPTION`` or ownership).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tether.catalog import Resource
from tether.credentials import failpoints
from tether.credentials.connectors.base import Minted, MintRequest
from tether.credentials.leases import Lease
from tether.errors import Forbidden, Unavailable

ROLE_PREFIX = "tether_l_"
_ROLE_RE = re.compile(r"^tether_l_[a-z0-9]{8,48}$")
_PRIVILEGES: Mapping[str, tuple[str, ...]] = {
    "read": ("SELECT",),
    "list": ("SELECT",),
    "http:read": ("SELECT",),
    "write": ("SELECT", "INSERT", "UPDATE"),
    "http:write": ("SELECT", "INSERT", "UPDATE"),
    "delete": ("SELECT", "DELETE"),
}
_SESSION_WAIT_S = 5.0


def role_name(lease_id: str) -> str:
    return ROLE_PREFIX + re.sub(r"[^a-z0-9]", "", lease_id.lower().split("_", 1)[-1])[:48]


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """RFC 5802/7677 SCRAM-SHA-256 verifier in PostgreSQL's ``rolpassword`` format."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _libpq(dsn: str) -> str:
    # Accept SQLAlchemy spellings too (postgresql+psycopg://…).
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", dsn)


def _qualified(name: str) -> sql.Composable:
    schema, dot, table = str(name).partition(".")
    return sql.Identifier(schema, table) if dot else sql.Identifier(schema)


def _fail(service: str, what: str, exc: Exception) -> Unavailable:
    # Only the SQLSTATE and class: psycopg messages may quote statements.
    state = getattr(exc, "sqlstate", None) or "-"
    return Unavailable(
        f"postgres connector for `{service}` could not {what} ({type(exc).__name__}, sqlstate {state})",
        code="connector_failed",
    )


class PostgresConnector:
    name = "postgres"
    offline_revoke = False

    def __init__(
        self, admin_dsns: Mapping[str, str], *, tag: str, connect_timeout: int = 5, max_connections: int = 5
    ) -> None:
        self._dsns = {k: _libpq(v) for k, v in admin_dsns.items()}
        self._tag = tag  # tells this broker's roles from another deployment's on a shared server
        self._timeout = connect_timeout
        self._max_conn = max_connections

    # -- plumbing ------------------------------------------------------------------------
    def _connect(self, service: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        dsn = self._dsns.get(service)
        if dsn is None:
            raise Unavailable(
                f"no admin connection configured for `{service}`; set `credentials.postgres.{service}`",
                code="connector_not_configured",
            )
        try:
            return psycopg.connect(dsn, connect_timeout=self._timeout, autocommit=autocommit)
        except psycopg.Error as exc:
            raise Unavailable(
                f"postgres for `{service}` is unreachable; the action is denied", code="connector_unavailable"
            ) from exc

    def _agent_dsn(self, resource: Resource, user: str, password: str) -> str:
        info = conninfo_to_dict(self._dsns[resource.service])
        host = str(resource.options.get("agent_host") or info.get("host") or "localhost")
        port = str(resource.options.get("agent_port") or info.get("port") or "5432")
        db = quote(str(info.get("dbname") or user), safe="")
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
        if host.startswith("/"):  # a Unix socket directory goes in the query
            return f"postgresql://{auth}@/{db}?host={quote(host, safe='/')}&port={quote(port, safe='')}"
        return f"postgresql://{auth}@{quote(host, safe='.-:[]')}:{quote(port, safe='')}/{db}"

    # -- the connector -------------------------------------------------------------------
    def plan(self, resource: Resource, lease_id: str) -> dict[str, Any]:
        return {"role": role_name(lease_id), "service": resource.service}

    def mint(self, req: MintRequest) -> Minted:
        res, lease = req.resource, req.lease
        tables = [str(t) for t in res.options.get("tables") or []]
        schemas = [str(s) for s in res.options.get("schemas") or []]
        if not tables and not schemas:
            raise Unavailable(
                f"the catalog names no `tables` or `schemas` for `{res.id}`", code="connector_misconfigured"
            )
        privs = sorted({p for a in req.actions for p in _PRIVILEGES.get(a, ())})
        if not privs:
            raise Forbidden(f"no database privilege maps to `{', '.join(req.actions)}`", code="no_privileges")
        role = role_name(lease.id)
        password = secrets.token_urlsafe(24)
        until = dt.datetime.fromtimestamp(lease.expires_at, dt.UTC).isoformat()
        priv_sql = sql.SQL(", ").join(sql.SQL(p) for p in privs)  # from the fixed table above
        r = sql.Identifier(role)
        usage = sorted({t.partition(".")[0] for t in tables if "." in t} | set(schemas))
        conn = self._connect(res.service)
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
                        "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {}"
                    ).format(
                        r,
                        sql.Literal(self._max_conn),
                        sql.Literal(scram_verifier(password)),
                        sql.Literal(until),
                    )
                )
                conn.execute(
                    sql.SQL("COMMENT ON ROLE {} IS {}").format(
                        r, sql.Literal(f"tether:{self._tag} lease {lease.id} task {lease.task_id}")
                    )
                )
                failpoints.hit("pg.after_create_role")
                for schema in usage:
                    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), r))
                for table in tables:
                    conn.execute(sql.SQL("GRANT {} ON TABLE {} TO {}").format(priv_sql, _qualified(table), r))
                for schema in schemas:
                    conn.execute(
                        sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(
                            priv_sql, sql.Identifier(schema), r
                        )
                    )
                failpoints.hit("pg.after_grants")
            failpoints.hit("pg.after_commit")
        except psycopg.Error as exc:
            raise _fail(res.service, "create the role", exc) from None
        finally:
            conn.close()
        return Minted(
            for_agent={
                "kind": "postgres",
                "dsn": self._agent_dsn(res, role, password),
                "username": role,
                "password": password,
                "expires_at": lease.expires_at,
            },
            material={"role": role, "service": res.service},
        )

    def revoke(self, lease: Lease) -> None:
        role = str(lease.material.get("role", ""))
        service = str(lease.material.get("service", lease.audience))
        self.drop_role(service, role)

    def drop_role(self, service: str, role: str) -> None:
        if not _ROLE_RE.match(role):
            # Never drop anything this connector could not have created.
            raise Unavailable(f"refusing to drop `{role[:64]}`: not a tether role", code="connector_failed")
        conn = self._connect(service, autocommit=True)
        try:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                return  # never created, or already dropped: revoking is idempotent
            r = sql.Identifier(role)
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(r))
            deadline = time.monotonic() + _SESSION_WAIT_S
            while conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s", (role,)
            ).fetchone() != (0,):
                if time.monotonic() > deadline:
                    raise Unavailable(f"sessions of `{role}` did not end", code="connector_failed")
                time.sleep(0.02)  # backends exit asynchronously after the signal
            with conn.transaction():
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(r))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(r))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(r))
        except psycopg.Error as exc:
            raise _fail(service, f"drop role `{role}`", exc) from None
        finally:
            conn.close()

    def roles(self, service: str) -> list[str]:
        """Login roles this broker created on ``service``'s server (by name and tag)."""
        conn = self._connect(service, autocommit=True)
        try:
            rows = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tether\\_l\\_%%' "
                "AND shobj_description(oid, 'pg_authid') LIKE %s",
                (f"tether:{self._tag} %",),
            ).fetchall()
        except psycopg.Error as exc:
            raise _fail(service, "list roles", exc) from None
        finally:
            conn.close()
        return [str(r[0]) for r in rows]

    def sweep(self, keep: Iterable[str]) -> list[str]:
        """Drop every tether role with no live lease on every configured server."""
        keep_set, dropped = set(keep), []
        for service in self._dsns:
            for role in self.roles(service):
                if role not in keep_set:
                    self.drop_role(service, role)
                    dropped.append(role)
        return dropped

    def health(self) -> None:
        for service in self._dsns:
            self._connect(service).close()

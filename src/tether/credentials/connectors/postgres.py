"""The ``postgres`` connector: a real, short-lived PostgreSQL login role per lease.

Catalog options (on the service or the dataset)::

    options:
      tables: [public.orders]      # schema.table; granted per action (read → SELECT, …)
      schemas: [reporting]         # every table in the schema
      agent_host: db.internal      # what the agent connects to, when not the admin host
      agent_port: 5432
      shared_login: billing_app    # grants copied from this legacy login (see shared_group)

Grants live on a **group role** (``tether_g_…``, ``NOLOGIN``), one per (service,
privileges, objects), set up once under an advisory lock and refreshed every minute;
a lease's role only *joins* its group. Minting therefore changes no ACL: parallel mints
cannot collide on ``tuple concurrently updated``. A mint is ONE transaction on the
target — ``CREATE ROLE … LOGIN … VALID UNTIL <lease expiry> IN ROLE <group>``, a
``COMMENT`` tagging it as this broker's, and ``GRANT <role> TO CURRENT_USER`` so that a
``NOSUPERUSER`` admin may later end its sessions and ``REASSIGN``/``DROP OWNED`` (15+
requires the role's privileges for both). The password goes to the server as a
SCRAM verifier, so the plaintext never reaches the server's statement log.

Revocation has two steps (see ``docs/credentials.md``): **cut** — ``NOLOGIN`` for every
role of a batch, committed, then their sessions terminated, in one round trip per target
— and **cleanup** — ``REASSIGN OWNED`` to the admin, ``DROP OWNED``, ``DROP ROLE``,
batched too, one role at a time only when a batch fails.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tether.catalog import Resource
from tether.credentials import failpoints
from tether.credentials.connectors import pgsql
from tether.credentials.connectors.base import Minted, MintRequest
from tether.credentials.connectors.pgpool import AdminPool
from tether.credentials.leases import Lease
from tether.errors import Forbidden, TetherError, Unavailable

log = logging.getLogger("tether.credentials")

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
GROUP_REFRESH_S = 60.0  # a group's grants are re-applied this often (new tables in a schema)

T = TypeVar("T")


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


def libpq_dsn(dsn: str) -> str:
    # Accept SQLAlchemy spellings too (postgresql+psycopg://…).
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", dsn)


def fail(service: str, what: str, exc: Exception) -> Unavailable:
    # Only the SQLSTATE and class: psycopg messages may quote statements.
    state = getattr(exc, "sqlstate", None) or "-"
    return Unavailable(
        f"postgres connector for `{service}` could not {what} ({type(exc).__name__}, sqlstate {state})",
        code="connector_failed",
    )


def _tether_roles(roles: Iterable[str]) -> list[str]:
    # Never touch anything this connector could not have created.
    return sorted({r for r in roles if _ROLE_RE.match(r)})


class PostgresConnector:
    name = "postgres"
    offline_revoke = False

    def __init__(self, admin_dsns: Mapping[str, str], *, tag: str, max_connections: int = 5) -> None:
        self._dsns = {k: libpq_dsn(v) for k, v in admin_dsns.items()}
        self.pool = AdminPool(self._dsns)
        self._tag = tag  # tells this broker's roles from another deployment's on a shared server
        self._max_conn = max_connections
        self._groups: dict[str, float] = {}  # group role → when its grants were last applied
        self._groups_lock = threading.Lock()
        self._shared: dict[str, tuple[float, str, list[pgsql.Held]]] = {}  # shared-login copies

    @property
    def tag(self) -> str:
        return self._tag

    def services(self) -> list[str]:
        return self.pool.services()

    def set_dsn(self, service: str, dsn: str) -> None:
        self._dsns[service] = libpq_dsn(dsn)
        self.pool.set_dsn(service, self._dsns[service])

    def close(self) -> None:
        self.pool.close()

    # -- plumbing ------------------------------------------------------------------------
    def _run(self, service: str, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn`` on a pooled connection; a connection that died while idle is replaced once."""
        for attempt in (1, 2):
            try:
                with self.pool.connection(service) as conn:
                    return fn(conn)
            except psycopg.OperationalError as exc:
                if attempt == 2 or getattr(exc, "sqlstate", None):
                    raise fail(service, what, exc) from None
            except psycopg.Error as exc:
                raise fail(service, what, exc) from None
        raise AssertionError("unreachable")

    def _agent_dsn(self, resource: Resource, user: str, password: str) -> str:
        info = conninfo_to_dict(self._dsns[resource.service])
        host = str(resource.options.get("agent_host") or info.get("host") or "localhost")
        port = str(resource.options.get("agent_port") or info.get("port") or "5432")
        db = quote(str(info.get("dbname") or user), safe="")
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
        if host.startswith("/"):  # a Unix socket directory goes in the query
            return f"postgresql://{auth}@/{db}?host={quote(host, safe='/')}&port={quote(port, safe='')}"
        return f"postgresql://{auth}@{quote(host, safe='.-:[]')}:{quote(port, safe='')}/{db}"

    def _group(self, service: str, privs: list[str], tables: list[str], schemas: list[str]) -> str:
        group = pgsql.group_name(self._tag, service, privs, tables, schemas)
        with self._groups_lock:
            fresh = time.monotonic() - self._groups.get(group, float("-inf")) < GROUP_REFRESH_S
        if fresh:
            return group
        comment = f"tether:{self._tag} group {service} {','.join(privs)} {','.join(tables + schemas)}"[:1000]

        def setup(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                attrs = conn.execute(
                    "SELECT rolsuper, rolcreaterole, rolinherit FROM pg_roles WHERE rolname = current_user"
                ).fetchone()
                if attrs is None or not (attrs[0] or (attrs[1] and attrs[2])):
                    raise Unavailable(
                        f"the admin role of `{service}` needs CREATEROLE and INHERIT; "
                        "run `tether connectors check` for the full list",
                        code="connector_misconfigured",
                    )
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", pgsql.ACL_LOCK)
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (group,)).fetchone()
                conn.execute(pgsql.group_setup(group, comment, privs, tables, schemas, create=exists is None))
                # An admin holding a privilege without GRANT OPTION gets only a WARNING from
                # GRANT, and the credential would silently lack it: check what the group holds.
                missing = conn.execute(pgsql.group_missing(group, privs, tables, schemas)).fetchone()
                if missing is not None:
                    raise Unavailable(
                        f"the admin role of `{service}` could not grant {missing[1]} on `{missing[0]}` "
                        "(it needs ownership or GRANT OPTION); run `tether connectors check`",
                        code="connector_misconfigured",
                    )

        self._run(service, "grant to its group role", setup)
        with self._groups_lock:
            self._groups[group] = time.monotonic()
        return group

    def shared_group(
        self, service: str, login: str, privs: list[str], tables: list[str], schemas: list[str]
    ) -> tuple[str, list[pgsql.Held]]:
        """The group role carrying a copy of what the legacy ``login`` holds (``options.
        shared_login``), within ``privs`` and the catalog's tables/schemas; and that copy.

        Read from the server (``has_table_privilege``: direct grants, memberships, ownership,
        PUBLIC) and re-applied every minute, so it follows what the login holds; retiring the
        login (``NOLOGIN``) does not change it. The admin grants the copy itself: it needs
        GRANT OPTION on each privilege, or membership in the owner (``tether secrets
        pg-import`` sets that up)."""
        key = "\x00".join([service, login, *privs, "|", *tables, "|", *schemas])
        with self._groups_lock:
            cached = self._shared.get(key)
        if cached is not None and time.monotonic() - cached[0] < GROUP_REFRESH_S:
            return cached[1], cached[2]

        def setup(conn: psycopg.Connection[Any]) -> tuple[str, list[pgsql.Held]]:
            with conn.transaction():
                found = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
                if found is None:
                    raise Unavailable(
                        f"the shared login `{login}` of `{service}` does not exist on its server",
                        code="connector_misconfigured",
                    )
                if found[0]:
                    raise Unavailable(
                        f"the shared login `{login}` of `{service}` is a superuser: its "
                        "privileges cannot be copied as grants",
                        code="connector_misconfigured",
                    )
                rows = conn.execute(pgsql.shared_privileges(login, privs, tables, schemas)).fetchall()
                copy = [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
                if not copy:
                    raise Forbidden(
                        f"the shared login `{login}` holds no {'/'.join(privs)} on the tables the "
                        f"catalog names for `{service}`",
                        code="no_privileges",
                    )
                stuck = [f"{r[2]} on {r[0]}.{r[1]}" for r in rows if not r[3]]
                if stuck:
                    raise Unavailable(
                        f"the admin role of `{service}` cannot grant {stuck[0]} (held by "
                        f"`{login}`); run `tether secrets pg-import` or give the admin GRANT OPTION",
                        code="connector_misconfigured",
                    )
                group = pgsql.shared_group_name(self._tag, service, login, copy)
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", pgsql.ACL_LOCK)
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (group,)).fetchone()
                comment = f"tether:{self._tag} shared {service} {login}"[:1000]
                conn.execute(pgsql.shared_group_setup(group, comment, copy, create=exists is None))
                missing = conn.execute(pgsql.shared_missing(group, copy)).fetchone()
                if missing is not None:
                    raise Unavailable(
                        f"the admin role of `{service}` could not grant {missing[1]} on "
                        f"`{missing[0]}`; run `tether connectors check`",
                        code="connector_misconfigured",
                    )
                return group, copy

        group, copy = self._run(service, f"copy the privileges of `{login}`", setup)
        with self._groups_lock:
            self._shared[key] = (time.monotonic(), group, copy)
        return group, copy

    def on_target(self, service: str, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn`` on a pooled admin connection to ``service``'s server; driver errors become
        ``connector_failed`` naming ``what`` (the legacy-login import and report use it)."""
        if service not in self._dsns:
            raise Unavailable(
                f"no `[credentials.postgres]` admin connection for `{service}`",
                code="connector_misconfigured",
            )
        return self._run(service, what, fn)

    def login_works(self, service: str, user: str, password: str) -> bool:
        """Whether ``user``/``password`` logs in to ``service``'s database (same host as the admin)."""
        info = conninfo_to_dict(self._dsns[service])
        info.update(user=user, password=password, connect_timeout="5")
        try:
            with psycopg.connect(**info) as c:  # type: ignore[arg-type]
                c.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    # -- the connector -------------------------------------------------------------------
    def plan(self, resource: Resource, lease_id: str) -> dict[str, Any]:
        return {"role": role_name(lease_id), "service": resource.service}

    def mint(self, req: MintRequest) -> Minted:
        res, lease = req.resource, req.lease
        tables = sorted({str(t) for t in res.options.get("tables") or []})
        schemas = sorted({str(s) for s in res.options.get("schemas") or []})
        shared = str(res.options.get("shared_login") or "")
        if not tables and not schemas and not shared:
            raise Unavailable(
                f"the catalog names no `tables` or `schemas` for `{res.id}`", code="connector_misconfigured"
            )
        privs = sorted({p for a in req.actions for p in _PRIVILEGES.get(a, ())})
        if not privs:
            raise Forbidden(f"no database privilege maps to `{', '.join(req.actions)}`", code="no_privileges")
        if shared:
            group, _ = self.shared_group(res.service, shared, privs, tables, schemas)
        else:
            group = self._group(res.service, privs, tables, schemas)
        role = role_name(lease.id)
        password = secrets.token_urlsafe(24)
        until = dt.datetime.fromtimestamp(lease.expires_at, dt.UTC).isoformat()
        comment = f"tether:{self._tag} lease {lease.id} task {lease.task_id}"
        stmt = pgsql.create_login(role, group, scram_verifier(password), until, comment, self._max_conn)

        def create(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(stmt)
                failpoints.hit("pg.after_create_role")
                failpoints.hit("pg.after_grants")
            failpoints.hit("pg.after_commit")

        self._run(res.service, "create the role", create)
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

    @staticmethod
    def _targets(leases: Sequence[Lease]) -> dict[str, dict[str, str]]:
        """service → role → lease id."""
        out: dict[str, dict[str, str]] = {}
        for x in leases:
            role = str(x.material.get("role", ""))
            out.setdefault(str(x.material.get("service", x.audience)), {})[role] = x.id
        return out

    def cut(self, service: str, roles: Sequence[str]) -> None:
        """Step one of revocation: no role of ``roles`` can log in or keeps a session."""
        names = _tether_roles(roles)
        if names:
            self._run(service, "cut access", lambda conn: conn.execute(pgsql.cut(names)))

    def revoke(self, lease: Lease) -> None:
        errors = self.revoke_many([lease])
        if errors.get(lease.id) is not None:
            raise errors[lease.id]  # type: ignore[misc]

    def revoke_many(self, leases: Sequence[Lease]) -> dict[str, TetherError | None]:
        """Cut and drop every lease's role; per lease, None (gone) or why not. Idempotent.
        Targets are worked in parallel: one that hangs holds up only its own leases."""
        targets = list(self._targets(leases).items())
        if len(targets) == 1:
            return self._revoke_target(*targets[0])
        out: dict[str, TetherError | None] = {}
        with ThreadPoolExecutor(max(1, len(targets)), thread_name_prefix="tether-revoke") as pool:
            for part in pool.map(lambda item: self._revoke_target(*item), targets):
                out.update(part)
        return out

    def _revoke_target(self, service: str, by_role: dict[str, str]) -> dict[str, TetherError | None]:
        out: dict[str, TetherError | None] = {}
        bad = [r for r in by_role if not _ROLE_RE.match(r)]
        for r in bad:
            out[by_role[r]] = Unavailable(
                f"refusing to drop `{r[:64]}`: not a tether role", code="connector_failed"
            )
        roles = [r for r in by_role if r not in bad]
        if not roles:
            return out
        try:
            self.drop_roles(service, roles)
            out.update({by_role[r]: None for r in roles})
        except TetherError as exc:
            if exc.code != "connector_failed":  # unreachable or unconfigured: same for every role
                return {**out, **{by_role[r]: exc for r in roles}}
            for r in roles:  # find which one: alone, each either goes or says why
                try:
                    self.drop_roles(service, [r])
                    out[by_role[r]] = None
                except TetherError as exc:
                    out[by_role[r]] = exc
        return out

    def drop_roles(self, service: str, roles: Sequence[str]) -> None:
        names = _tether_roles(roles)
        if not names:
            return

        def work(conn: psycopg.Connection[Any]) -> None:
            rows = conn.execute(
                "SELECT rolname, pg_has_role(current_user, oid, 'USAGE') FROM pg_roles "
                "WHERE rolname = ANY(%s)",
                (names,),
            ).fetchall()
            present = sorted(str(r[0]) for r in rows)
            if not present:
                return  # never created, or already dropped: revoking is idempotent
            outsiders = [str(r[0]) for r in rows if not r[1]]
            try:
                if outsiders:  # join first: ending their sessions needs their privileges too
                    conn.execute(pgsql.join(outsiders))
                conn.execute(pgsql.cut(present))
                conn.execute(pgsql.drop(present))
            except psycopg.Error:
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                    conn.execute("ROLLBACK")
                raise

        what = f"drop role `{names[0]}`" if len(names) == 1 else f"drop {len(names)} roles"
        self._run(service, what, work)

    def drop_role(self, service: str, role: str) -> None:
        if not _ROLE_RE.match(role):
            raise Unavailable(f"refusing to drop `{role[:64]}`: not a tether role", code="connector_failed")
        self.drop_roles(service, [role])

    def roles(self, service: str) -> list[str]:
        """Login roles this broker created on ``service``'s server (by name and tag)."""

        def work(conn: psycopg.Connection[Any]) -> list[str]:
            rows = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tether\\_l\\_%%' "
                "AND shobj_description(oid, 'pg_authid') LIKE %s",
                (f"tether:{self._tag} %",),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return self._run(service, "list roles", work)

    def sweep(self, keep: Callable[[], set[str]]) -> list[str]:
        """Drop every tether role no lease accounts for, on every configured server.

        ``keep`` is read *after* the roles are listed: a role is committed only after its
        lease row (on a PostgreSQL store), so a role that a replica is minting right now
        is always in ``keep``."""
        dropped = []
        for service in self._dsns:
            found = self.roles(service)
            if not found:
                continue
            kept = keep()
            orphans = [r for r in found if r not in kept]
            if orphans:
                self.drop_roles(service, orphans)
                dropped.extend(orphans)
        return dropped

    def health(self) -> None:
        for service in self._dsns:
            self._run(service, "connect", lambda conn: conn.execute("SELECT 1"))

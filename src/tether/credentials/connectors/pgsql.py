"""The SQL of the ``postgres`` connector, built once per call from fixed fragments.

Every identifier goes through ``psycopg.sql.Identifier`` and every value through
``sql.Literal``; role names are also checked against the connector's own pattern before
they reach a statement. Statements that run together are joined into one string: with
no bound parameters psycopg sends it as one simple query — one round trip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from psycopg import sql

#: Advisory lock (two-key form, in the target database) taken around every change Tether
#: makes to an object's ACL. PostgreSQL updates the ACL of a schema or table in place, and
#: two concurrent GRANTs on one object fail with `tuple concurrently updated`.
ACL_LOCK = (0x7E7E, 0x0020)
#: Seconds a wait for a terminated backend may take (PostgreSQL 14+ `pg_terminate_backend(pid, ms)`).
TERMINATE_WAIT_MS = 1000


def qualified(name: str) -> sql.Composable:
    schema, dot, table = str(name).partition(".")
    return sql.Identifier(schema, table) if dot else sql.Identifier(schema)


def group_name(
    tag: str, service: str, privs: Sequence[str], tables: Sequence[str], schemas: Sequence[str]
) -> str:
    """The NOLOGIN role holding one set of grants; per-lease roles join it."""
    key = "\x00".join([tag, service, ",".join(privs), ",".join(tables), "|", ",".join(schemas)])
    return "tether_g_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def group_setup(
    group: str,
    comment: str,
    privs: Sequence[str],
    tables: Sequence[str],
    schemas: Sequence[str],
    *,
    create: bool,
) -> sql.Composed:
    g = sql.Identifier(group)
    parts: list[sql.Composable] = []
    if create:
        parts.append(sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(g))
        parts.append(sql.SQL("COMMENT ON ROLE {} IS {}").format(g, sql.Literal(comment)))
    priv_sql = sql.SQL(", ").join(sql.SQL(p) for p in privs)  # from the connector's fixed table
    usage = sorted({t.partition(".")[0] for t in tables if "." in t} | set(schemas))
    for schema in usage:
        parts.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), g))
    for table in tables:
        parts.append(sql.SQL("GRANT {} ON TABLE {} TO {}").format(priv_sql, qualified(table), g))
    for schema in schemas:
        parts.append(
            sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(priv_sql, sql.Identifier(schema), g)
        )
    return sql.SQL("; ").join(parts)


def group_missing(
    group: str, privs: Sequence[str], tables: Sequence[str], schemas: Sequence[str]
) -> sql.Composed:
    """One (object, privilege) the group should hold and does not, or no row."""
    g = sql.Literal(group)
    privs_arr = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(p) for p in privs))
    names: list[sql.Composable] = [sql.Literal(qualified(t).as_string(None)) for t in tables]
    objs = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(names or [sql.SQL("NULL")]))
    return sql.SQL(
        "SELECT o, p FROM ("
        " SELECT t AS o FROM unnest({objs}) AS t WHERE t IS NOT NULL"
        " UNION SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
        "  WHERE schemaname = ANY({schemas})"
        ") objs CROSS JOIN unnest({privs}) AS p WHERE NOT has_table_privilege({g}, o, p) LIMIT 1"
    ).format(
        objs=objs,
        schemas=_array(list(schemas)) if schemas else sql.SQL("ARRAY[]::text[]"),
        privs=privs_arr,
        g=g,
    )


def create_login(
    role: str, group: str, verifier: str, until: str, comment: str, max_conn: int
) -> sql.Composed:
    """One lease's role: a member of its group, and a role the admin is a member of (so a
    NOSUPERUSER admin may terminate its sessions and REASSIGN/DROP OWNED on 15+)."""
    r = sql.Identifier(role)
    return sql.SQL("; ").join(
        [
            sql.SQL(
                "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT "
                "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {} IN ROLE {}"
            ).format(
                r, sql.Literal(max_conn), sql.Literal(verifier), sql.Literal(until), sql.Identifier(group)
            ),
            sql.SQL("COMMENT ON ROLE {} IS {}").format(r, sql.Literal(comment)),
            sql.SQL("GRANT {} TO CURRENT_USER").format(r),
        ]
    )


def _array(roles: Sequence[str]) -> sql.Composed:
    return sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(r) for r in roles))


def cut(roles: Sequence[str]) -> sql.Composed:
    """No new login, then no session: ``NOLOGIN`` commits *before* the sessions are
    terminated, so a login racing the cut is either refused or terminated. A role that
    is already gone is skipped, so one batch serves any mix of states."""
    # Another session cutting or dropping the same role at the same moment makes ALTER ROLE
    # wait for it and then fail with `tuple concurrently updated` (XX000); by then that
    # change has committed, so trying again sees it (NOLOGIN already, or the role gone).
    body = sql.SQL(
        "DECLARE r text; BEGIN FOREACH r IN ARRAY {} LOOP FOR i IN 1..5 LOOP "
        "BEGIN EXECUTE format('ALTER ROLE %I NOLOGIN', r); EXIT; "
        "EXCEPTION WHEN undefined_object THEN EXIT; "
        "WHEN internal_error THEN IF i = 5 THEN RAISE; END IF; END; END LOOP; END LOOP; END"
    ).format(_array(roles))
    return sql.SQL(
        "BEGIN; DO $tether$ {} $tether$; COMMIT; "
        "SELECT count(pg_terminate_backend(pid, {})) FROM pg_stat_activity WHERE usename = ANY({})"
    ).format(body, sql.Literal(TERMINATE_WAIT_MS), _array(roles))


def join(roles: Sequence[str]) -> sql.Composed:
    """Make the admin a member of roles it did not mint itself (minted before it joined each
    one, or by another tool): REASSIGN/DROP OWNED and ending their sessions need it on 15+."""
    return sql.SQL("; ").join(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(r)) for r in roles)


def drop(roles: Sequence[str]) -> sql.Composed:
    """Objects the roles own go to the admin, their grants go, then the roles."""
    rs = sql.SQL(", ").join(sql.Identifier(r) for r in roles)
    return sql.SQL("; ").join(
        [
            sql.SQL("BEGIN"),
            sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(rs),
            sql.SQL("DROP OWNED BY {}").format(rs),
            sql.SQL("DROP ROLE {}").format(rs),
            sql.SQL("COMMIT"),
        ]
    )


# -- shared-login mode (``options.shared_login``) -------------------------------------------
#: Table-like relations whose privileges a shared login's copy carries.
_RELKINDS = "('r', 'p', 'v', 'm', 'f')"
_TABLE_PRIVS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})

#: One privilege of a copy: (schema, table, privilege).
Held = tuple[str, str, str]


def shared_privileges(
    login: str, privs: Sequence[str], tables: Sequence[str], schemas: Sequence[str]
) -> sql.Composed:
    """(schema, table, privilege, admin may grant it) for every table privilege ``login``
    holds — directly, through its memberships, as owner or through PUBLIC — among
    ``privs``, on the catalog's ``tables``/``schemas`` (every non-system table when both
    are empty). With INSERT or UPDATE, USAGE on the sequences those tables' serial/identity
    columns draw from (when the login has it) comes too, or an insert would still fail.
    The copy a per-task role carries is exactly these rows."""
    anywhere = not tables and not schemas
    where = sql.SQL(
        "n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' AND ({anywhere} OR "
        "n.nspname || '.' || c.relname = ANY({tables}) OR n.nspname = ANY({schemas}))"
    ).format(
        anywhere=sql.Literal(anywhere),
        tables=_array(list(tables)) if tables else sql.SQL("ARRAY[]::text[]"),
        schemas=_array(list(schemas)) if schemas else sql.SQL("ARRAY[]::text[]"),
    )
    login_l = sql.Literal(login)
    parts = [
        sql.SQL(
            "SELECT n.nspname, c.relname, p, "
            "has_table_privilege(current_user, c.oid, p || ' WITH GRANT OPTION') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN unnest({privs}) AS p "
            "WHERE c.relkind IN " + _RELKINDS + " AND {where} AND has_table_privilege({login}, c.oid, p)"
        ).format(privs=_array([p for p in privs if p in _TABLE_PRIVS]), where=where, login=login_l)
    ]
    if {"INSERT", "UPDATE"} & set(privs):
        parts.append(
            sql.SQL(
                "SELECT sn.nspname, s.relname, 'USAGE', "
                # has_sequence_privilege raises on anything but a sequence, and the planner may
                # call it before the relkind test: every call is guarded.
                "CASE WHEN s.relkind = 'S' "
                "THEN has_sequence_privilege(current_user, s.oid, 'USAGE WITH GRANT OPTION') END "
                "FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace "
                "JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i') "
                "JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE s.relkind = 'S' AND {where} "
                "AND CASE WHEN s.relkind = 'S' THEN has_sequence_privilege({login}, s.oid, 'USAGE') END"
            ).format(where=where, login=login_l)
        )
    return sql.SQL("SELECT DISTINCT * FROM ({}) AS held ORDER BY 1, 2, 3").format(
        sql.SQL(" UNION ALL ").join(parts)
    )


def shared_group_name(tag: str, service: str, login: str, copy: Sequence[Held]) -> str:
    """The NOLOGIN role holding one copy of a shared login's privileges: a change to what
    the login holds names a new group (roles minted before keep the copy they joined)."""
    key = "\x00".join([tag, service, login, *("\x01".join(h) for h in copy)])
    return "tether_s_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def shared_group_setup(group: str, comment: str, copy: Sequence[Held], *, create: bool) -> sql.Composed:
    """Create the group (once) and grant it each privilege of the copy."""
    g = sql.Identifier(group)
    parts: list[sql.Composable] = []
    if create:
        parts.append(sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(g))
        parts.append(sql.SQL("COMMENT ON ROLE {} IS {}").format(g, sql.Literal(comment)))
    by_table: dict[tuple[str, str], list[str]] = {}
    sequences = []
    for schema, table, priv in copy:
        if priv in _TABLE_PRIVS:  # the fixed list: privileges are spliced as keywords
            by_table.setdefault((schema, table), []).append(priv)
        elif priv == "USAGE":
            sequences.append((schema, table))
    for schema in sorted({s for s, _ in [*by_table, *sequences]}):
        parts.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), g))
    for (schema, table), ps in sorted(by_table.items()):
        privs = sql.SQL(", ").join(sql.SQL(p) for p in ps)
        parts.append(sql.SQL("GRANT {} ON TABLE {} TO {}").format(privs, sql.Identifier(schema, table), g))
    for schema, seq in sorted(sequences):
        parts.append(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.Identifier(schema, seq), g))
    return sql.SQL("; ").join(parts)


def shared_missing(group: str, copy: Sequence[Held]) -> sql.Composed:
    """One (schema.table, privilege) of the copy the group does not hold, or no row."""
    rows = sql.SQL(", ").join(
        sql.SQL("({}, {})").format(sql.Literal(sql.Identifier(s, t).as_string(None)), sql.Literal(p))
        for s, t, p in copy
    )
    return sql.SQL(
        "SELECT o, p FROM (VALUES {rows}) AS want(o, p) WHERE NOT CASE WHEN p = 'USAGE' "
        "THEN has_sequence_privilege({g}, o, p) ELSE has_table_privilege({g}, o, p) END LIMIT 1"
    ).format(rows=rows, g=sql.Literal(group))

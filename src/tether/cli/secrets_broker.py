"""`tether secrets import|inventory|rotate`: legacy secrets moved behind the gateway and retired."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from tether.cli._common import admin_socket, console, json_option, output, print_rows, run, state_dir_option
from tether.errors import ConfigError, NotFound
from tether.legacy.engine import fingerprint
from tether.legacy.scan import Finding, pg_login_of, scan, value_of
from tether.server.admin import call


def _day(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M") if ts else "-"


def _exposures(findings: list[Finding]) -> list[dict[str, Any]]:
    return [
        {"root": f.root, "path": f.path, "line": f.line, "commit": f.commit, "live": f.source == "tree"}
        for f in findings
    ]


def _route_for(routes_file: Path, service: str) -> str:
    from tether.gateway.routes import load_routes

    for r in load_routes(routes_file).routes:
        if r.service == service:
            return r.prefix
    raise ConfigError(f"`{routes_file}` has no route for service `{service}`; add a [[routes]] entry first",
                      code="no_route_for_service", field="routes")  # fmt: skip


def import_cmd(
    state_dir: Path,
    fp: str | None,
    sources: tuple[Path, ...],
    service: str,
    routes_file: Path | None,
    name: str | None,
    header: str,
    prefix: str,
    from_stdin: bool,
    rotate_postgres: str | None,
    admin_dsn_env: str,
    rotate_command: str | None,
    rotate_every: float | None,
    as_json: bool,
) -> None:
    def work() -> dict[str, Any]:
        if bool(fp) == from_stdin:
            raise ConfigError("give a FINGERPRINT from `tether secrets scan` or `--stdin`, not both",
                              code="invalid_arguments", field="fingerprint")  # fmt: skip
        route = _route_for(routes_file, service) if routes_file else None
        value: str | None = None
        if from_stdin:
            value = sys.stdin.readline().rstrip("\r\n")
        want = fp or fingerprint(value or "")
        found = [f for f in scan(list(sources)).findings if f.fingerprint == want] if sources else []
        if fp:
            if not found:
                raise NotFound(f"no finding `{fp}` under {', '.join(map(str, sources)) or 'no path'}; "
                               "give the scanned paths with `--from`", code="finding_not_found")  # fmt: skip
            f = found[0]
            value = value_of(Path(f.root), f.path, f.line, f.fingerprint, f.commit)
            if value is None:
                raise NotFound(f"`{f.path}:{f.line}` no longer holds `{fp}`; scan again",
                               code="finding_not_found")  # fmt: skip
        rotation: dict[str, Any] | None = None
        if rotate_postgres:
            rotation = {"kind": "postgres", "dsn": rotate_postgres, "admin_dsn_env": admin_dsn_env}
        elif rotate_command:
            rotation = {"kind": "command", "argv": shlex.split(rotate_command)}
        if rotation is not None and rotate_every is not None:
            rotation["every_days"] = rotate_every
        args = {
            "service": service,
            "name": name,
            "value": prefix + (value or ""),
            "header": header,
            "kind": found[0].kind if found else "manual",
            "exposures": _exposures(found),
            "first_seen": min((f.first_seen for f in found), default=None),
            "rotation": rotation,
        }
        done: dict[str, Any] = call(admin_socket(state_dir), "secrets.import", args)
        done.update(route=route, exposures=args["exposures"], fingerprint=want)
        return done

    def render(d: dict[str, Any]) -> None:
        live = [e for e in d["exposures"] if e["live"]]
        console.print(f"[green]✓[/] secret {d['name']} ({d['fingerprint']}) stored for service {d['service']}"
                      + (f", route {d['route']}" if d["route"] else ""), highlight=False)  # fmt: skip
        if d["connector"] != "inject":
            console.print(
                f"[yellow]note[/] service {d['service']} uses connector `{d['connector']}`, not `inject`"
            )
        for e in d["exposures"]:
            where = f"{e['path']}:{e['line']}" + (f" (commit {e['commit'][:12]})" if e["commit"] else "")
            console.print(
                f"  still in code: {where}" if e["live"] else f"  in history: {where}", highlight=False
            )
        if live:
            console.print("next: route agents through the gateway, rotate, then delete it from code")

    output(run(work, as_json), as_json, render)


def inventory_cmd(state_dir: Path, as_json: bool) -> None:
    rows = run(lambda: call(admin_socket(state_dir), "secrets.inventory"), as_json)

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print("no secrets")
            return
        cols = ("name", "service", "kind", "fingerprint", "age (d)", "last used", "rotation", "in code")
        print_rows(cols, [
            (r["name"], r["service"], r["kind"] or "-", r["fingerprint"] or "-", f"{r['age_days']:.0f}",
             _day(r["last_used"]), f"{r['rotation'] or '-'}: {r['rotation_status']}",
             f"{r['exposures_live']} live / {len(r['exposures'])}")
            for r in rows
        ], ids=("name", "fingerprint"))  # fmt: skip

    output(rows, as_json, render)


def rotate_cmd(state_dir: Path, name: str, as_json: bool) -> None:
    data = run(lambda: call(admin_socket(state_dir), "secrets.rotate", {"name": name}, timeout=300), as_json)

    def render(d: dict[str, Any]) -> None:
        if d["status"] == "ok":
            console.print(
                f"[green]✓[/] {d['name']} rotated, now {d['fingerprint']}; the old value is retired"
            )
        else:
            console.print(f"[yellow]![/] {d['name']} switched to {d['fingerprint']}, but retiring the old "
                          f"value failed: {d['error']}", highlight=False)  # fmt: skip

    output(data, as_json, render)
    if data.get("status") != "ok":
        sys.exit(1)


def register(group: click.Group) -> None:
    @group.command("import")
    @state_dir_option
    @click.argument("fp", metavar="[FINGERPRINT]", required=False)
    @click.option(
        "--from",
        "sources",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Paths scanned to find FINGERPRINT (and where the secret still appears).",
    )
    @click.option("--service", required=True, help="Catalog service the secret belongs to.")
    @click.option(
        "--routes",
        "routes_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Gateway routes file: refuse unless a route serves --service.",
    )
    @click.option("--name", help="Secret name (default: the service's `inject` secret name).")
    @click.option("--header", default="Authorization", show_default=True, help="Header the gateway sets.")
    @click.option("--prefix", default="", help="Put before the value in the header, e.g. `Bearer `.")
    @click.option("--stdin", "from_stdin", is_flag=True, help="Read the value from stdin instead.")
    @click.option(
        "--rotate-postgres", metavar="DSN", help="Rotate as this role: `postgresql://role@host/db`."
    )
    @click.option(
        "--admin-dsn-env",
        default="TETHER_ROTATE_ADMIN_DSN",
        show_default=True,
        help="Broker environment variable holding the admin DSN for --rotate-postgres.",
    )
    @click.option("--rotate-command", metavar="CMD", help="Rotate by running `CMD new|verify|retire`.")
    @click.option(
        "--rotate-every",
        type=float,
        metavar="DAYS",
        help="Rotate on a schedule: when the value is older than DAYS (the broker checks each minute).",
    )
    @json_option
    def import_(**kw: Any) -> None:  # fmt: skip
        """Store a found secret (by FINGERPRINT, re-read from its file or commit) or a value
        from stdin in the broker's encrypted store, bound to SERVICE: the gateway then injects
        it on allowed calls and agents never hold it.

        \b
          tether secrets import fp_… --from . --service slack-external --routes routes.toml
          printf %s "$TOKEN" | tether secrets import --stdin --service email --from .
        """
        import_cmd(**kw)

    @group.command("inventory")
    @state_dir_option
    @json_option
    def inventory(state_dir: Path, as_json: bool) -> None:
        """Every long-lived secret the broker holds: age, last use through the gateway,
        rotation status and where it still appears in code."""
        inventory_cmd(state_dir, as_json)

    @group.command("rotate")
    @state_dir_option
    @click.argument("name")
    @json_option
    def rotate(state_dir: Path, name: str, as_json: bool) -> None:
        """Rotate secret NAME: write new, verify, switch the gateway to it, retire the old.

        A failure before the switch leaves the previous secret working (exit 1, audited)."""
        rotate_cmd(state_dir, name, as_json)

    register_pg(group)


# -- shared PostgreSQL logins ------------------------------------------------------------------
def pg_import_cmd(
    state_dir: Path,
    fp: str | None,
    sources: tuple[Path, ...],
    service: str,
    login: str | None,
    password_stdin: bool,
    as_json: bool,
) -> None:
    def work() -> dict[str, Any]:
        if bool(fp) == bool(login):
            raise ConfigError(
                "give a FINGERPRINT of a PostgreSQL URL from `tether secrets scan`, or --login",
                code="invalid_arguments",
                field="fingerprint",
            )
        args: dict[str, Any] = {"service": service, "login": login}
        if password_stdin:
            args["password"] = sys.stdin.readline().rstrip("\r\n")
        if fp:
            found = [f for f in scan(list(sources)).findings if f.fingerprint == fp] if sources else []
            if not found:
                raise NotFound(
                    f"no finding `{fp}` under {', '.join(map(str, sources)) or 'no path'}; "
                    "give the scanned paths with `--from`",
                    code="finding_not_found",
                )
            f = found[0]
            value = value_of(Path(f.root), f.path, f.line, f.fingerprint, f.commit)
            user = value and pg_login_of(Path(f.root), f.path, f.line, value, f.commit)
            if not value or not user:
                raise NotFound(
                    f"`{f.path}:{f.line}` holds no PostgreSQL URL with `{fp}` (anymore); scan again",
                    code="finding_not_found",
                )
            args.update(
                login=user,
                password=value,
                fingerprint=fp,
                exposures=_exposures(found),
                first_seen=min(x.first_seen for x in found),
            )
        done: dict[str, Any] = call(admin_socket(state_dir), "secrets.pg_import", args, timeout=120)
        return done

    def render(d: dict[str, Any]) -> None:
        console.print(
            f"[green]✓[/] shared login {d['login']} of {d['service']} imported as {d['name']}"
            + (" (the admin joined it to pass on what it owns)" if d["admin_joined"] else ""),
            highlight=False,
        )
        for c in d["copies"]:
            console.print(
                f"per-task roles for {c['resource']} join {c['group']}, holding (within their actions):",
                highlight=False,
            )
            print_rows(
                ("table", "privileges"),
                [(t["table"], ", ".join(t["privileges"])) for t in c["tables"]],
                ids=("table",),
            )
        _render_usage(d["usage"])
        console.print(
            f"next: move clients to per-task credentials, watch `tether secrets pg-usage {d['name']}`, "
            f"then `tether secrets pg-retire {d['name']}`",
            highlight=False,
        )

    output(run(work, as_json), as_json, render)


def _render_usage(u: dict[str, Any]) -> None:
    if not u["sessions"]:
        console.print(f"no session uses {u['login']} right now")
    else:
        console.print(f"[yellow]{u['sessions']} session(s) still use {u['login']}:[/]", highlight=False)
        print_rows(
            ("database", "client", "application", "sessions", "since", "last active"),
            [
                (
                    c["database"],
                    c["client"],
                    c["application"] or "-",
                    str(c["sessions"]),
                    _day(c["since"]),
                    _day(c["last_active"]),
                )
                for c in u["clients"]
            ],
            ids=("client",),
        )
    st = u["statements"]
    if st["available"]:
        console.print(
            f"pg_stat_statements: {st['calls']} call(s) of {st['statements']} statement(s) "
            f"since {_day(st['since'])}",
            highlight=False,
        )
    else:
        console.print(f"[dim]pg_stat_statements: {st['reason']}[/]", highlight=False)
    if u.get("hint"):
        console.print(f"[yellow]note[/] {u['hint']}", highlight=False)


def pg_usage_cmd(state_dir: Path, name: str, as_json: bool) -> None:
    data = run(lambda: call(admin_socket(state_dir), "secrets.pg_usage", {"name": name}), as_json)

    def render(d: dict[str, Any]) -> None:
        _render_usage(d)
        if d["seen"]:
            console.print(
                f"seen with {d['login']} (sampled every {d['sample_every_s']:.0f} s since "
                f"{_day(d['sampled_since'])}):",
                highlight=False,
            )
            print_rows(
                ("database", "client", "application", "first seen", "last seen", "max sessions"),
                [
                    (
                        x["database"],
                        x["client"],
                        x["application"] or "-",
                        _day(x["first_seen"]),
                        _day(x["last_seen"]),
                        str(x["sessions_max"]),
                    )
                    for x in d["seen"]
                ],
                ids=("client",),
            )
        if d["safe_to_retire"]:
            console.print(
                f"[green]✓[/] no session now: `tether secrets pg-retire {d['name']}` (the statement "
                "counts above, if any, show use between snapshots)",
                highlight=False,
            )

    output(data, as_json, render)


def pg_retire_cmd(state_dir: Path, name: str, force: bool, as_json: bool) -> None:
    data = run(
        lambda: call(admin_socket(state_dir), "secrets.pg_retire", {"name": name, "force": force}), as_json
    )
    output(
        data,
        as_json,
        lambda d: console.print(
            f"[green]✓[/] {d['login']} retired: NOLOGIN, its password replaced by one no one holds"
            + (f"; {d['sessions_ended']} session(s) ended" if d["sessions_ended"] else ""),
            highlight=False,
        ),
    )


def register_pg(group: click.Group) -> None:
    @group.command("pg-import")
    @state_dir_option
    @click.argument("fp", metavar="[FINGERPRINT]", required=False)
    @click.option(
        "--from",
        "sources",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Paths scanned to find FINGERPRINT (a PostgreSQL URL with a password).",
    )
    @click.option("--service", required=True, help="Catalog service (connector `postgres`) of the database.")
    @click.option("--login", help="Name the shared login instead of a FINGERPRINT.")
    @click.option(
        "--password-stdin", is_flag=True, help="With --login: read its password to check it logs in."
    )
    @json_option
    def pg_import(**kw: Any) -> None:
        """Import a shared PostgreSQL login: tasks then get their own short-lived roles with a copy
        of its privileges (the catalog service names it: `options: {shared_login: LOGIN}`).

        \b
          tether secrets pg-import fp_… --from . --service billing-db
          tether secrets pg-import --login billing_app --service billing-db
        """
        pg_import_cmd(**kw)

    @group.command("pg-usage")
    @state_dir_option
    @click.argument("name")
    @json_option
    def pg_usage(state_dir: Path, name: str, as_json: bool) -> None:
        """Who still uses shared login NAME: sessions by database, client and application_name
        (pg_stat_activity), and statement counts where pg_stat_statements is loaded."""
        pg_usage_cmd(state_dir, name, as_json)

    @group.command("pg-retire")
    @state_dir_option
    @click.argument("name")
    @click.option("--force", is_flag=True, help="Retire even with sessions open (they are ended).")
    @json_option
    def pg_retire(state_dir: Path, name: str, force: bool, as_json: bool) -> None:
        """Retire shared login NAME: NOLOGIN and a password no one holds; refused while a session
        uses it (unless --force). Its grants stay: per-task roles copy them."""
        pg_retire_cmd(state_dir, name, force, as_json)

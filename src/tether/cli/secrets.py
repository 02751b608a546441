"""`tether secrets scan|set|list|delete`: legacy secrets found, brokered, retired."""

from __future__ import annotations

import datetime as dt
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

import tether
from tether.catalog import load_catalog
from tether.cli._common import (
    admin_socket,
    console,
    err_console,
    fail,
    json_option,
    output,
    print_rows,
    run,
    state_dir_option,
)
from tether.errors import ConfigError, TetherError
from tether.legacy import output as scan_output
from tether.legacy.scan import Progress, ScanResult, scan
from tether.server.admin import call


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@click.group()
def secrets() -> None:
    """Upstream secrets: find legacy ones in code and history, broker them, retire them.

    \b
    Migration (docs/secrets.md):
      tether secrets scan . --write-baseline .secrets-baseline.json
      tether secrets import FINGERPRINT --from . --service slack-external
      tether secrets inventory
    """


@secrets.command("set")
@state_dir_option
@click.argument("name")
@click.option("--header", default="Authorization", show_default=True, help="Header the enforcer sets.")
@json_option
def set_(state_dir: Path, name: str, header: str, as_json: bool) -> None:
    """Store secret NAME; the value is read from stdin (or prompted), never from arguments."""
    if sys.stdin.isatty():
        value = click.prompt("value (full header value, e.g. `Bearer sk-…`)", hide_input=True)
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    data = run(
        lambda: call(
            admin_socket(state_dir), "secrets.set", {"name": name, "value": value, "header": header}
        ),
        as_json,
    )
    output(data, as_json, lambda d: console.print(f"[green]✓[/] secret {d['name']} stored"))


@secrets.command("list")
@state_dir_option
@json_option
def list_secrets(state_dir: Path, as_json: bool) -> None:
    """List secret names and headers (never values)."""
    rows = run(lambda: call(admin_socket(state_dir), "secrets.list"), as_json)

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("name", "header", "updated (UTC)")
        for r in rows:
            t.add_row(r["name"], r["header"], _when(r["updated_at"]))
        console.print(t if rows else "no secrets")

    output(rows, as_json, render)


@secrets.command("delete")
@state_dir_option
@click.argument("name")
@json_option
def delete(state_dir: Path, name: str, as_json: bool) -> None:
    """Delete secret NAME (its services then deny with `secret_not_configured`)."""
    data = run(lambda: call(admin_socket(state_dir), "secrets.delete", {"name": name}), as_json)
    output(data, as_json, lambda d: console.print("deleted" if d["deleted"] else "no such secret"))


class _Bar(Progress):
    def __init__(self, bar: RichProgress) -> None:
        self._bar = bar
        self._task: Any = None

    def start(self, total: int) -> None:
        self._task = self._bar.add_task("git history", total=total or None)

    def advance(self) -> None:
        if self._task is not None:
            self._bar.advance(self._task)


def service_hosts(
    catalog_file: Path | None, routes_files: tuple[Path, ...]
) -> tuple[dict[str, str], list[str]]:
    """Hosts of known services (catalog `options.base_url`, gateway route upstreams) and service ids."""
    from urllib.parse import urlsplit

    from tether.gateway.routes import load_routes

    hosts: dict[str, str] = {}
    services: list[str] = []
    if catalog_file is not None:
        cat = load_catalog(catalog_file)
        for r in cat.resources.values():
            if r.kind != "service":
                continue
            services.append(r.id)
            urls = r.options.get("base_url", [])
            for u in [urls] if isinstance(urls, str) else list(urls):
                host = urlsplit(str(u)).hostname
                if host:
                    hosts[host] = r.id
    for f in routes_files:
        for route in load_routes(f).routes:
            host = urlsplit(route.upstream).hostname
            if host:
                hosts.setdefault(host, route.service)
            if route.service not in services:
                services.append(route.service)
    return hosts, services


def _default_catalog(state_dir: Path) -> Path | None:
    cfg = state_dir / "config.toml"
    name = "catalog.yaml"
    if cfg.exists():
        try:
            name = str(tomllib.loads(cfg.read_text()).get("catalog_file", name))
        except tomllib.TOMLDecodeError:
            return None
    p = state_dir / name
    return p if p.exists() else None


@secrets.command("scan")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@state_dir_option
@click.option(
    "--history/--no-history",
    default=True,
    show_default=True,
    help="Scan every commit of git repositories too.",
)
@click.option(
    "--catalog",
    "catalog_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Catalog whose services findings are attributed to (default: the state dir's).",
)
@click.option(
    "--routes",
    "routes_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Gateway routes file(s): their upstream hosts name services.",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Acknowledged findings (from --write-baseline); with --fail-on new only others fail.",
)
@click.option(
    "--write-baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every finding's fingerprint here.",
)
@click.option(
    "--sarif",
    "sarif_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write SARIF 2.1.0 here (`-` for stdout) for code-scanning tools.",
)
@click.option(
    "--fail-on",
    type=click.Choice(["any", "new", "none"]),
    default="any",
    show_default=True,
    help="Exit 1 when there is any finding, one not in --baseline, or never.",
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="Skip paths matching GLOB (relative to each PATH)."
)
@click.option(
    "--max-bytes", default=2 * 1024 * 1024, show_default=True, help="Skip (and count) larger files."
)
@click.option(
    "--process-env", "pids", multiple=True, type=int, metavar="PID",
    help="Also scan the environment of running process PID (opt-in; needs /proc access).",
)  # fmt: skip
@json_option
def scan_cmd(
    paths: tuple[Path, ...],
    state_dir: Path,
    history: bool,
    catalog_file: Path | None,
    routes_files: tuple[Path, ...],
    baseline: Path | None,
    write_baseline: Path | None,
    sarif_file: Path | None,
    fail_on: str,
    exclude: tuple[str, ...],
    max_bytes: int,
    pids: tuple[int, ...],
    as_json: bool,
) -> None:  # fmt: skip
    """Find secrets in PATHS: working trees and (for git repositories) every commit.

    Findings show a fingerprint, never the value. Exit status: 0 clean, 1 findings
    (see --fail-on), 2 bad arguments.

    \b
    In CI, acknowledge what is known once, then fail only on new secrets:
      tether secrets scan . --write-baseline .secrets-baseline.json --fail-on none
      tether secrets scan . --baseline .secrets-baseline.json --fail-on new --sarif out.sarif
    """
    try:
        known = scan_output.load_baseline(baseline) if baseline else set()
        if fail_on == "new" and baseline is None:
            raise ConfigError(
                "`--fail-on new` needs `--baseline FILE`", code="baseline_missing", field="baseline"
            )
        if not paths and not pids:
            raise ConfigError("give PATHS to scan (or `--process-env PID`)", code="invalid_arguments",
                              field="paths")  # fmt: skip
        hosts, services = service_hosts(catalog_file or _default_catalog(state_dir), routes_files)
    except TetherError as exc:
        fail(exc, as_json)
    show_bar = history and not as_json and err_console.is_terminal and sarif_file != Path("-")
    if show_bar:
        with RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), console=err_console, transient=True) as bar:  # fmt: skip
            result = scan(list(paths), history=history, hosts=hosts, services=services, progress=_Bar(bar),
                          max_bytes=max_bytes, exclude=exclude, processes=pids)  # fmt: skip
    else:
        result = scan(list(paths), history=history, hosts=hosts, services=services,
                      max_bytes=max_bytes, exclude=exclude, processes=pids)  # fmt: skip
    new = [f for f in result.findings if f.fingerprint not in known]
    if write_baseline is not None:
        write_baseline.write_text(json.dumps(scan_output.baseline(result.findings), indent=2) + "\n")
    if sarif_file is not None:
        doc = json.dumps(scan_output.sarif(result.findings, tether.__version__), indent=2)
        if sarif_file == Path("-"):
            click.echo(doc)
        else:
            sarif_file.write_text(doc + "\n")
    if as_json:
        view = result.view()
        for f in view["findings"]:
            f["new"] = f["fingerprint"] not in known
        click.echo(json.dumps(view, indent=2))
    elif sarif_file != Path("-"):
        _render_scan(result, known)
    failing = {"any": result.findings, "new": new, "none": []}[fail_on]
    sys.exit(1 if failing else 0)


def _render_scan(result: ScanResult, known: set[str]) -> None:
    view = result.view()
    rows: list[tuple[str, ...]] = []
    for f in view["findings"]:
        fp = f["fingerprint"] + ("" if f["fingerprint"] in known or not known else " (new)")
        rows.append((f["kind"], f["location"], (f["commit"] or "")[:12] or "tree", fp,
                     f"{f['age_days']:.0f}", f["service"] or "-", "yes" if f["live"] else "no"))  # fmt: skip
    if rows:
        cols = ("kind", "location", "commit", "fingerprint", "age (d)", "service", "live")
        print_rows(cols, rows, ids=("location", "fingerprint"))
    else:
        console.print("[green]no secrets found[/]")
    s = view["stats"]
    console.print(f"{s['files']} files, {s['commits']} commits scanned", highlight=False)
    sk = view["skipped"]
    if sk["total"]:
        why = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(sk["by_reason"].items()))
        err_console.print(f"[yellow]warning[/] skipped {sk['total']}: {why}", highlight=False)


def register(main: click.Group) -> None:
    from tether.cli import secrets_broker

    secrets_broker.register(secrets)
    main.add_command(secrets)

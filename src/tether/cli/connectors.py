"""`tether connectors check`: can each connector target mint AND revoke, before it must?"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether.catalog import load_catalog
from tether.cli._common import console, json_option, output, run, state_dir_option
from tether.config import load_settings
from tether.credentials.connectors.pgcheck import check_postgres
from tether.errors import InvalidRequest

_STYLE = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


@click.group()
def connectors() -> None:
    """Check the systems that connectors mint credentials on."""


@connectors.command("check")
@state_dir_option
@click.option("--service", "only", help="Check only this service id (a key of `[credentials.postgres]`).")
@click.option(
    "--no-probe", is_flag=True, help="Skip the live probe (a role created and dropped, rolled back)."
)
@json_option
def check(state_dir: Path, only: str | None, no_probe: bool, as_json: bool) -> None:
    """Verify each target's admin privileges and say exactly what is missing.

    For every `[credentials.postgres]` target: the connection, the admin role's
    attributes (NOSUPERUSER, CREATEROLE, INHERIT), CONNECT for the roles it mints, the
    grant options on every schema and table the catalog names for that service, and a
    probe that creates, joins, cuts and drops a role inside a transaction it rolls back.
    Exits 1 when any check fails. Reads the config; the broker need not be running.
    """

    def work() -> dict[str, Any]:
        settings = load_settings(state_dir)
        catalog = load_catalog(settings.catalog_path)
        targets = dict(settings.credentials.postgres)
        if only is not None:
            if only not in targets:
                raise InvalidRequest(
                    f"no `[credentials.postgres]` entry `{only}` in {settings.state_dir / 'tether.toml'}",
                    code="unknown_service",
                    field="service",
                )
            targets = {only: targets[only]}
        reports = []
        for service, dsn in sorted(targets.items()):
            resources = [
                r for r in catalog.resources.values() if r.service == service and r.connector == "postgres"
            ]
            reports.append(check_postgres(service, dsn, resources, probe=not no_probe).to_dict())
        return {"ok": all(r["ok"] for r in reports), "targets": reports}

    data = run(work, as_json)

    def render(d: dict[str, Any]) -> None:
        if not d["targets"]:
            console.print("no connector targets: add `[credentials.postgres]` entries to tether.toml")
        for rep in d["targets"]:
            t = Table(
                "check",
                "status",
                "found",
                title=f"{rep['connector']} · {rep['service']}",
                title_justify="left",
            )
            for c in rep["checks"]:
                t.add_row(c["name"], _STYLE.get(c["status"], c["status"]), c["detail"])
            console.print(t)
            for c in rep["checks"]:
                if c["fix"] and c["status"] != "ok":
                    console.print(f"  [bold]{c['name']}[/] → {c['fix']}", highlight=False, soft_wrap=True)
        if d["targets"]:
            console.print(
                "[green]✓ ready to mint and revoke[/]" if d["ok"] else "[bold red]✗ fix the above first[/]"
            )

    output(data, as_json, render)
    if not data["ok"]:
        sys.exit(1)


def register(main: click.Group) -> None:
    main.add_command(connectors)

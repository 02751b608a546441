"""`tether leases list|revoke|stats`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether.cli._common import admin_socket, console, json_option, output, run, state_dir_option
from tether.server.admin import call

_STYLE = {
    "active": "green",
    "pending": "yellow",
    "revoking": "yellow",
    "revoked": "dim",
    "irrevocable": "bold red",
}


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@click.group()
def leases() -> None:
    """Inspect and revoke the credentials (leases) tasks were given."""


@leases.command("list")
@state_dir_option
@click.option("--state", type=click.Choice(["pending", "active", "revoking", "revoked", "irrevocable"]))
@click.option("--task", "task_id", help="Only leases of this task.")
@click.option("--irrevocable", is_flag=True, help="Only leases whose revocation failed for good.")
@json_option
def list_(state_dir: Path, state: str | None, task_id: str | None, irrevocable: bool, as_json: bool) -> None:
    """List recent leases (newest first)."""
    rows = run(
        lambda: call(
            admin_socket(state_dir),
            "leases.list",
            {"state": state, "task_id": task_id, "irrevocable": irrevocable},
        ),
        as_json,
    )

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("lease", "task", "connector", "audience", "state", "revocation", "tries", "expires (UTC)")
        for r in rows:
            style = _STYLE.get(r["state"], "")
            t.add_row(
                r["lease_id"],
                r["task_id"],
                r["connector"],
                r["audience"],
                f"[{style}]{r['state']}[/]",
                r["revocation"],
                str(r["attempts"]),
                _when(r["expires_at"]),
            )
        console.print(t if rows else "no leases")
        if irrevocable and rows:
            console.print(
                "[bold red]these credentials may still work[/]: remove them at their system by "
                "hand, then `tether leases revoke LEASE` to record it"
            )

    output(rows, as_json, render)


@leases.command("revoke")
@state_dir_option
@click.argument("lease_id")
@json_option
def revoke(state_dir: Path, lease_id: str, as_json: bool) -> None:
    """Revoke one lease now (or retry an irrevocable one)."""
    data = run(lambda: call(admin_socket(state_dir), "leases.revoke", {"lease_id": lease_id}), as_json)
    output(data, as_json, lambda d: console.print(f"[red]✗[/] {d['lease_id']} {d['state']}"))


@leases.command("stats")
@state_dir_option
@json_option
def stats(state_dir: Path, as_json: bool) -> None:
    """Counters (minted, revoked, failures, irrevocable) and leases by state."""
    data = run(lambda: call(admin_socket(state_dir), "leases.stats"), as_json)
    output(data, as_json, lambda d: console.print(d))


def register(main: click.Group) -> None:
    main.add_command(leases)

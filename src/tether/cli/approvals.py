"""`tether approvals list`, `tether approve ID`, `tether reject ID`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether.cli._common import admin_socket, console, json_option, output, run, state_dir_option
from tether.cli.tasks import when
from tether.server.admin import call


@click.group()
def approvals() -> None:
    """Human approvals that policy asked for."""


@approvals.command("list")
@state_dir_option
@click.option(
    "--state",
    type=click.Choice(["pending", "granted", "rejected", "consumed"]),
    default="pending",
    show_default=True,
)
@json_option
def list_(state_dir: Path, state: str, as_json: bool) -> None:
    """List approvals (pending by default)."""
    rows = run(lambda: call(admin_socket(state_dir), "approvals.list", {"state": state}), as_json)

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("approval", "task", "action", "resource", "why", "expires (UTC)")
        for r in rows:
            t.add_row(
                r["approval_id"], r["task_id"], r["action"], r["resource"], r["reason"], when(r["expires_at"])
            )
        console.print(t if rows else f"no {state} approvals")

    output(rows, as_json, render)


def _decide(op: str, state_dir: Path, approval_id: str, as_json: bool) -> None:
    data = run(lambda: call(admin_socket(state_dir), op, {"approval_id": approval_id}), as_json)
    output(
        data,
        as_json,
        lambda d: console.print(
            f"{'[green]✓ granted' if d['state'] == 'granted' else '[red]✗ rejected'}[/] {d['approval_id']}: "
            f"{d['action']} on {d['resource']} for task {d['task_id']}"
        ),
    )


@click.command()
@state_dir_option
@click.argument("approval_id")
@json_option
def approve(state_dir: Path, approval_id: str, as_json: bool) -> None:
    """Grant a pending approval: the identical call may then run once."""
    _decide("approvals.approve", state_dir, approval_id, as_json)


@click.command()
@state_dir_option
@click.argument("approval_id")
@json_option
def reject(state_dir: Path, approval_id: str, as_json: bool) -> None:
    """Reject a pending approval."""
    _decide("approvals.reject", state_dir, approval_id, as_json)


def register(main: click.Group) -> None:
    main.add_command(approvals)
    main.add_command(approve)
    main.add_command(reject)

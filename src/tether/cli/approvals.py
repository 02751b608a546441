"""`tether approvals list`, `tether approve ID`, `tether reject ID`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from tether.cli._common import admin_socket, console, json_option, output, print_rows, run, state_dir_option
from tether.cli.tasks import when
from tether.model import ApprovalState
from tether.server.admin import call


@click.group()
def approvals() -> None:
    """Human approvals that policy asked for."""


@approvals.command("list")
@state_dir_option
@click.option(
    "--state",
    type=click.Choice([s.value for s in ApprovalState]),
    default="pending",
    show_default=True,
    help="`expired`: nobody answered before the expiry.",
)
@json_option
def list_(state_dir: Path, state: str, as_json: bool) -> None:
    """List approvals (pending by default)."""
    rows = run(lambda: call(admin_socket(state_dir), "approvals.list", {"state": state}), as_json)

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print(f"no {state} approvals")
            return
        columns = ("approval", "task", "action", "resource", "why", "expires (UTC)")
        keys = ("approval_id", "task_id", "action", "resource", "reason")
        table = [(*(r[k] for k in keys), when(r["expires_at"])) for r in rows]
        print_rows(columns, table, ids=("approval", "task"))

    output(rows, as_json, render)


@approvals.command("show")
@state_dir_option
@click.argument("approval_id")
@json_option
def show(state_dir: Path, approval_id: str, as_json: bool) -> None:
    """Show what an approval is about: agent, task, arguments (masked), risk, the policy's message."""
    data = run(lambda: call(admin_socket(state_dir), "approvals.show", {"approval_id": approval_id}), as_json)

    def render(d: dict[str, Any]) -> None:
        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column(style="dim", no_wrap=True)
        t.add_column(overflow="fold")
        for label, value in (
            ("approval", d["approval_id"]),
            ("state", d["state"]),
            ("why", d["reason"]),
            ("agent", d["agent"] or "?"),
            ("task", d["task_id"]),
            ("intent", d["intent"] or ""),
            ("description", d["description"] or ""),
            ("delegator", d["delegator"] or "none: the agent acted on its own"),
            ("action", d["action"]),
            ("resource", d["resource"]),
            (
                "arguments",
                json.dumps(d["arguments"], indent=2) if d["arguments"] is not None else "(not recorded)",
            ),
            ("masked", ", ".join(d["masked"]) or "-"),
            ("risk", ", ".join(f"{k}={v}" for k, v in sorted(d["risk"].items())) or "-"),
            ("policies", "; ".join(f"{r['policy_id']}: {r['message']}" for r in d["reasons"]) or "-"),
            ("expires (UTC)", when(d["expires_at"])),
            ("decided by", f"{d['decided_by']} at {when(d['decided_at'])}" if d["decided_by"] else "-"),
        ):
            t.add_row(label, Text(str(value)))
        console.print(t)
        if d["state"] == "pending":
            console.print(
                f"decide with `tether approve {d['approval_id']}` or `tether reject {d['approval_id']}`"
            )
        elif d["state"] == "expired":
            console.print("nobody answered before it expired; the agent's same call asks again")

    output(data, as_json, render)


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

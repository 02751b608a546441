"""`tether mcp tools list|approve|retire`: review MCP tool definitions the gateways pinned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether.cli._common import admin_socket, console, json_option, output, run, state_dir_option
from tether.cli.tasks import when
from tether.server.admin import call


@click.group()
def mcp() -> None:
    """MCP servers behind the gateway."""


@mcp.group()
def tools() -> None:
    """Pinned tool definitions (rug-pull defence): a changed tool is blocked until approved.

    Each definition (digest) of a tool has its own state: approving a new one leaves the
    old one approved until you retire it, so gateways still serving it keep working.
    """


@tools.command("list")
@state_dir_option
@click.option("--server", help="Only this MCP server (catalog service id).")
@click.option("--changed", is_flag=True, help="Only tools waiting for approval.")
@json_option
def list_(state_dir: Path, server: str | None, changed: bool, as_json: bool) -> None:
    """List pinned definitions; pending ones show which fields changed and the new definition."""
    rows = run(lambda: call(admin_socket(state_dir), "mcp.tools.list", {"server": server}), as_json)
    if changed:
        rows = [r for r in rows if r["state"] == "pending"]

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("server", "tool", "state", "digest", "changed fields", "first seen (UTC)")
        for r in rows:
            style = {"pending": "red", "retired": "dim"}.get(r["state"], "green")
            t.add_row(
                r["server"],
                r["tool"],
                f"[{style}]{r['state']}[/]",
                r["digest"][:19],
                ", ".join(r.get("changed_fields", [])),
                when(r["first_seen"]),
            )
        console.print(t if rows else "no pinned tools")
        for r in rows:
            if r["state"] == "pending":
                console.print(f"\n[bold]{r['server']}.{r['tool']}[/] now presents (digest {r['digest']}):")
                console.print_json(json.dumps(r["definition"]))

    output(rows, as_json, render)


@tools.command("approve")
@state_dir_option
@click.argument("server")
@click.argument("tool")
@click.option("--digest", help="Approve only this pending digest (what you reviewed with `list`).")
@json_option
def approve(state_dir: Path, server: str, tool: str, digest: str | None, as_json: bool) -> None:
    """Accept the changed definition of SERVER's TOOL; calls to it work again."""
    data = run(
        lambda: call(
            admin_socket(state_dir), "mcp.tools.approve", {"server": server, "tool": tool, "digest": digest}
        ),
        as_json,
    )
    output(
        data,
        as_json,
        lambda d: console.print(f"[green]✓[/] {d['server']}.{d['tool']} approved at {d['digest']}"),
    )


@tools.command("retire")
@state_dir_option
@click.argument("server")
@click.argument("tool")
@click.option("--digest", required=True, help="The definition to withdraw (see `list`).")
@json_option
def retire(state_dir: Path, server: str, tool: str, digest: str, as_json: bool) -> None:
    """Withdraw one definition of SERVER's TOOL: gateways presenting it block its calls."""
    data = run(
        lambda: call(
            admin_socket(state_dir), "mcp.tools.retire", {"server": server, "tool": tool, "digest": digest}
        ),
        as_json,
    )
    output(
        data,
        as_json,
        lambda d: console.print(f"[green]✓[/] {d['server']}.{d['tool']} retired {d['digest']}"),
    )


def register(main: click.Group) -> None:
    main.add_command(mcp)

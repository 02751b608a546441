"""`tether mcp tools list|approve`: review MCP tool definitions the gateways pinned."""

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
    """Pinned tool definitions (rug-pull defence): a changed tool is blocked until approved."""


@tools.command("list")
@state_dir_option
@click.option("--server", help="Only this MCP server (catalog service id).")
@click.option("--changed", is_flag=True, help="Only tools waiting for approval.")
@json_option
def list_(state_dir: Path, server: str | None, changed: bool, as_json: bool) -> None:
    """List pinned tools; changed ones show which fields changed and the new definition."""
    rows = run(lambda: call(admin_socket(state_dir), "mcp.tools.list", {"server": server}), as_json)
    if changed:
        rows = [r for r in rows if r["state"] == "changed"]

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("server", "tool", "state", "digest", "changed fields", "first seen (UTC)")
        for r in rows:
            style = "red" if r["state"] == "changed" else "green"
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
            if r["state"] == "changed":
                console.print(
                    f"\n[bold]{r['server']}.{r['tool']}[/] now presents (digest {r['pending_digest']}):"
                )
                console.print_json(json.dumps(r["pending_definition"]))

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


def register(main: click.Group) -> None:
    main.add_command(mcp)

"""`tether workload register|list|show|remove`: registration entries for the local Workload API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.tree import Tree

from tether.cli._common import admin_socket, console, json_option, output, run, state_dir_option
from tether.server.admin import call


@click.group()
def workload() -> None:
    """Decide which local processes get which SPIFFE ID.

    A process that asks the Workload API (a Unix socket next to the broker) is identified
    by the kernel: uid, gid, executable path and SHA-256. An entry's selectors must all
    match it. The SPIFFE ID must be in the broker's `trust_domain` (tether.toml;
    `support.example` after `tether init`), and `unix:path` must be the interpreter's real
    path (not a pyenv or venv shim). Example, for the current user running python3:

    \b
      tether workload register spiffe://support.example/agents/triage \\
        --selector unix:uid:$(id -u) \\
        --selector unix:path:$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))') \\
        --attr owner=team-a
    """


def _attrs(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"`{v}` is not KEY=VALUE", param_hint="--attr")
        out[key] = value
    return out


def _render(d: dict[str, Any]) -> None:
    tree = Tree(f"[bold]{d['spiffe_id']}[/] [dim]{d['entry_id']}[/]")
    sel = tree.add("selectors (all must match)")
    for s in d["selectors"]:
        sel.add(s)
    if d.get("attributes"):
        attrs = tree.add("attributes")
        for k, v in d["attributes"].items():
            attrs.add(f"{k} = {v}")
    tree.add(f"[dim]by {d.get('created_by', '')}[/]")
    console.print(tree)


@workload.command("register")
@state_dir_option
@click.argument("spiffe_id")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    required=True,
    metavar="unix:TYPE:VALUE",
    help="uid, user, gid, group, path or sha256; repeat (all must match).",
)
@click.option(
    "--attr",
    "attrs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Attribute the policy sees as a principal tag; repeat.",
)
@json_option
def register_entry(
    state_dir: Path, spiffe_id: str, selectors: tuple[str, ...], attrs: tuple[str, ...], as_json: bool
) -> None:
    """Give SPIFFE_ID to local processes matching every --selector."""
    args = {"spiffe_id": spiffe_id, "selectors": list(selectors), "attributes": _attrs(attrs)}
    data = run(lambda: call(admin_socket(state_dir), "workload.register", args), as_json)

    def render(d: dict[str, Any]) -> None:
        console.print("[green]✓[/] registered")
        _render(d)

    output(data, as_json, render)


@workload.command("list")
@state_dir_option
@click.option("--spiffe-id", help="Only entries for this SPIFFE ID.")
@json_option
def list_(state_dir: Path, spiffe_id: str | None, as_json: bool) -> None:
    """List registration entries."""
    rows = run(lambda: call(admin_socket(state_dir), "workload.list", {"spiffe_id": spiffe_id}), as_json)

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("entry", "SPIFFE ID", "selectors", "attributes")
        for r in rows:
            t.add_row(
                r["entry_id"],
                r["spiffe_id"],
                "\n".join(r["selectors"]),
                " ".join(f"{k}={v}" for k, v in r["attributes"].items()),
            )
        console.print(t if rows else "no registration entries; add one with `tether workload register`")

    output(rows, as_json, render)


@workload.command("show")
@state_dir_option
@click.argument("entry_id")
@json_option
def show(state_dir: Path, entry_id: str, as_json: bool) -> None:
    """Show one registration entry."""
    data = run(lambda: call(admin_socket(state_dir), "workload.show", {"entry_id": entry_id}), as_json)
    output(data, as_json, _render)


@workload.command("remove")
@state_dir_option
@click.argument("entry_id")
@json_option
def remove(state_dir: Path, entry_id: str, as_json: bool) -> None:
    """Remove a registration entry (SVIDs already issued expire within minutes)."""
    data = run(lambda: call(admin_socket(state_dir), "workload.remove", {"entry_id": entry_id}), as_json)
    output(data, as_json, lambda d: console.print(f"[red]✗[/] removed {d['entry_id']} ({d['spiffe_id']})"))


def register(main: click.Group) -> None:
    main.add_command(workload)

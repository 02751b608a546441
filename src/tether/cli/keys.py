"""`tether keys list|rotate`: the broker's signing keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether.cli._common import admin_socket, console, json_option, output, run, state_dir_option
from tether.cli.tasks import when
from tether.server.admin import call


@click.group()
def keys() -> None:
    """The broker's ES256 signing keys (tokens, SVIDs, credentials)."""


@keys.command("list")
@state_dir_option
@json_option
def list_(state_dir: Path, as_json: bool) -> None:
    """List keys that still verify: the current one signs, older ones verify until they expire."""
    rows = run(lambda: call(admin_socket(state_dir), "keys.list"), as_json)

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("kid", "created (UTC)", "stops signing", "stops verifying")
        for r in rows:
            t.add_row(r["kid"], when(r["created_at"]), when(r["retires_at"]), when(r["expires_at"]))
        console.print(t)

    output(rows, as_json, render)


@keys.command()
@state_dir_option
@json_option
def rotate(state_dir: Path, as_json: bool) -> None:
    """Start signing with a new key now; the old one keeps verifying for `keys.overlap_seconds`."""
    data = run(lambda: call(admin_socket(state_dir), "keys.rotate"), as_json)
    output(data, as_json, lambda d: console.print(f"[green]✓[/] now signing with {d['kid']}"))


def register(main: click.Group) -> None:
    main.add_command(keys)

"""Shared CLI plumbing: state directory, JSON vs Rich output, error reporting."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tether.errors import TetherError

console = Console()
err_console = Console(stderr=True)

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TETHER_STATE_DIR",
    default=Path(".tether"),
    show_default=True,
    help="Broker state directory (config, keys, SQLite).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def print_rows(columns: tuple[str, ...], rows: list[tuple[str, ...]], ids: tuple[str, ...]) -> None:
    """Print a table whose id columns (named in ``ids``) are never cut: people copy them into
    the next command. Other columns fold onto more lines; when even that cannot fit the
    terminal, each row is printed as a block of ``name: value`` lines instead."""
    idx = [i for i, c in enumerate(columns) if c in ids]
    need = sum(max([len(columns[i]), *(len(r[i]) for r in rows)]) for i in idx)
    need += 3 * len(columns) + 1 + 8 * (len(columns) - len(idx))  # borders, padding, folded columns
    if need <= console.width:
        t = Table()
        for name in columns:
            t.add_column(name, no_wrap=name in ids, overflow="fold")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        return
    for n, r in enumerate(rows):
        if n:
            console.print()
        for name, value in zip(columns, r, strict=True):
            console.print(f"[dim]{name}:[/] {value}", highlight=False, soft_wrap=True)


def admin_socket(state_dir: Path) -> Path:
    return state_dir.absolute() / "admin.sock"


def output(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def fail(exc: TetherError, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps({"error": exc.to_dict()}), err=False)
    else:
        # soft_wrap: a path or a policy file name in the message must stay on one line
        # for people who copy it and for scripts that grep it.
        err_console.print(
            f"[bold red]error[/] [dim]({exc.code})[/] {exc.message}", highlight=False, soft_wrap=True
        )
    sys.exit(1 if exc.code != "broker_not_running" else 3)


def run(fn: Callable[[], Any], as_json: bool = False) -> Any:
    try:
        return fn()
    except TetherError as exc:
        fail(exc, as_json)

"""Shared CLI plumbing: state directory, JSON vs Rich output, error reporting."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

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

"""`tether audit verify` (more investigation commands live beside it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tether.audit.verify import verify_chains
from tether.cli._common import console, json_option, output, run, state_dir_option
from tether.config import load_settings
from tether.store.db import Database


@click.group()
def audit() -> None:
    """Investigate the audit log."""


@audit.command()
@state_dir_option
@click.option("--store", help="Store URL to read [default: the state directory's].")
@json_option
def verify(state_dir: Path, store: str | None, as_json: bool) -> None:
    """Walk every hash chain; report the first broken link (exit 1 when broken).

    Reads the store directly, so it works with the broker stopped.
    """
    settings = run(lambda: load_settings(state_dir, overrides={"store": store}), as_json)
    db = Database(settings.store_url)

    def go() -> Any:
        with db.read() as conn:
            return verify_chains(conn)

    report = run(go, as_json)
    db.dispose()

    def render(_: Any) -> None:
        for chain, n in report.chains.items():
            console.print(f"chain [bold]{chain}[/]: {n} events")
        for b in report.breaks:
            console.print(f"[red]✗ broken[/] chain {b.chain} at seq [bold]{b.seq}[/] ({b.kind}): {b.message}")
        if report.ok:
            console.print(f"[green]✓[/] audit log intact: {report.events} events")

    output(report.to_dict(), as_json, render)
    if not report.ok:
        raise SystemExit(1)


def register(main: click.Group) -> None:
    main.add_command(audit)

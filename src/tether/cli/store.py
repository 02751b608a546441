"""`tether store status|upgrade`: the database schema, for operators (backup, restore and
check are in ``store_backup``).

Both read the store directly (the broker may be stopped). The broker applies pending
revisions at start by itself; `upgrade` lets an operator do it first, e.g. before
rolling out replicas, and `status` says whether that is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether.cli import store_backup
from tether.cli._common import console, fail, json_option, output, run, state_dir_option
from tether.config import Settings, load_settings
from tether.store import migrations
from tether.store.db import Database

store_option = click.option("--store", help="Store URL [default: the state directory's].")

_STATE_TEXT = {
    "up_to_date": "[green]up to date[/]",
    "pending": "[yellow]revisions pending[/] (run `tether store upgrade`, or start the broker)",
    "empty": "[yellow]empty[/] (the broker creates the schema at start, or run `tether store upgrade`)",
    "newer": "[red]newer than this tether[/] (the broker refuses to start on it)",
}


@click.group()
def store() -> None:
    """The store: its schema revision, upgrades, backups and restores."""


def _open(state_dir: Path, url: str | None, as_json: bool) -> Database:
    s: Settings = run(lambda: load_settings(state_dir, overrides={"store": url}), as_json)
    db: Database = run(lambda: Database(s.store_url), as_json)
    return db


def _status(db: Database) -> migrations.SchemaStatus:
    with db.guard():
        return migrations.status(db.engine)


def _render_status(d: dict[str, Any]) -> None:
    t = Table(box=None, show_header=False)
    t.add_row("state", _STATE_TEXT.get(d["state"], d["state"]))
    t.add_row("dialect", d["dialect"])
    t.add_row("current revision", d["current"] or "(none)")
    t.add_row("newest known", d["head"])
    t.add_row("pending", ", ".join(d["pending"]) or "(none)")
    if d["legacy"]:
        t.add_row("note", "made before Alembic; the baseline revision adopts it")
    console.print(t)


@store.command()
@state_dir_option
@store_option
@json_option
def status(state_dir: Path, store: str | None, as_json: bool) -> None:
    """Show the database's schema revision and what is pending. Exits 1 when it is newer."""
    db = _open(state_dir, store, as_json)
    try:
        st = run(lambda: _status(db), as_json)
    finally:
        db.dispose()
    output(st.to_dict(), as_json, _render_status)
    if st.state == "newer":
        raise SystemExit(1)


@store.command()
@state_dir_option
@store_option
@json_option
def upgrade(state_dir: Path, store: str | None, as_json: bool) -> None:
    """Apply every pending revision now (under the same lock the broker takes at start)."""
    db = _open(state_dir, store, as_json)
    try:
        before = run(lambda: _status(db), as_json)
        if before.state == "newer":
            fail(migrations.newer_error(before), as_json)
        applied: list[str] = run(db.migrate, as_json)
        after = run(lambda: _status(db), as_json)
    finally:
        db.dispose()
    data = {"applied": applied, "from": before.current, **after.to_dict()}

    def render(d: dict[str, Any]) -> None:
        if d["applied"]:
            console.print(
                f"[green]✓[/] applied {', '.join(d['applied'])}: now at revision [bold]{d['current']}[/]"
            )
        else:
            console.print(f"[green]✓[/] already at the newest revision [bold]{d['current']}[/]")

    output(data, as_json, render)


store_backup.register(store)


def register(main: click.Group) -> None:
    main.add_command(store)

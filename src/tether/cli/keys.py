"""`tether keys list|rotate|rewrap`: the broker's signing keys and the master key that wraps them."""

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


@keys.command()
@click.option(
    "--new-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The new master key: 32 random bytes, base64url, on one line.",
)
@state_dir_option
@click.option("--store", help="Store URL [default: the state directory's].")
@json_option
def rewrap(new_key_file: Path, state_dir: Path, store: str | None, as_json: bool) -> None:
    """Re-encrypt the signing keys and stored secrets under a new master key.

    Stop every broker on this store first (this one is checked). The signing keys do not
    change: tokens and credentials already issued keep verifying. Signed-in console
    sessions end. With `master.key` in the state directory it is replaced by the new key;
    with TETHER_MASTER_KEY, set it to the new key on every replica before starting them.
    """
    import os

    from tether.config import load_settings
    from tether.identity.keys import MASTER_KEY_ENV, MASTER_KEY_FILE, load_master_key, parse_master_key
    from tether.identity.rewrap import Rewrapped
    from tether.identity.rewrap import rewrap as do_rewrap
    from tether.server.instance import claim
    from tether.store.db import Database

    settings = run(lambda: load_settings(state_dir, overrides={"store": store}), as_json)
    lock = run(lambda: claim(settings.state_dir, "tether keys rewrap"), as_json)
    try:
        old = run(lambda: load_master_key(settings.state_dir), as_json)
        text = new_key_file.read_text().strip()
        new = run(lambda: parse_master_key(text, str(new_key_file)), as_json)
        db = Database(settings.store_url)
        try:
            done: Rewrapped = run(lambda: do_rewrap(db, old, new), as_json)
        finally:
            db.dispose()
        from_env = bool(os.environ.get(MASTER_KEY_ENV))
        if not from_env:
            path = settings.state_dir / MASTER_KEY_FILE
            tmp = path.with_name(f".{MASTER_KEY_FILE}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, path)
    finally:
        lock.release()
    data = {"signing_keys": done.signing_keys, "secrets": done.secrets, "master_key_from_env": from_env}

    def render(d: dict[str, Any]) -> None:
        console.print(f"[green]✓[/] rewrapped {d['signing_keys']} signing keys and {d['secrets']} secrets")
        if d["master_key_from_env"]:
            console.print(f"  set {MASTER_KEY_ENV} to the new key on every replica, then start them")
        else:
            console.print(f"  {settings.state_dir / MASTER_KEY_FILE} now holds the new key")

    output(data, as_json, render)


def register(main: click.Group) -> None:
    main.add_command(keys)

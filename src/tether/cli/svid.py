"""`tether svid fetch|bundle`: JWT-SVIDs from the local Workload API, for shell scripts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tether.cli._common import json_option, output, run, state_dir_option
from tether.config import load_settings
from tether.errors import TetherError
from tether.identity.wiring import socket_path
from tether.sdk.workload import fetch_bundles, fetch_svids

SOCKET_ENV = "TETHER_WORKLOAD_SOCKET"


def _socket(state_dir: Path, socket: Path | None) -> Path:
    if socket is not None:
        return socket
    # The broker's configured socket when this user can read its config; callers of other
    # users usually cannot (the state directory is 0700) and pass --socket instead.
    try:
        settings = load_settings(state_dir)
    except (TetherError, OSError):
        return state_dir.absolute() / "workload.sock"
    return socket_path(settings) or state_dir.absolute() / "workload.sock"


socket_option = click.option(
    "--socket",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=SOCKET_ENV,
    help=f"Workload API socket (default: the broker's, from <state-dir>; env {SOCKET_ENV}).",
)


@click.group()
def svid() -> None:
    """Get JWT-SVIDs for this process from the local Workload API.

    No secret is needed: the broker asks the kernel who is calling and matches that
    against registration entries (see `tether workload --help`).

    \b
      SVID=$(tether svid fetch --audience spiffe://tether.local/tether)
      curl -H "Authorization: Bearer $SVID" http://127.0.0.1:8421/v1/tasks -d @task.json
    """


@svid.command("fetch")
@state_dir_option
@socket_option
@click.option(
    "--audience",
    "audiences",
    multiple=True,
    required=True,
    help="Who the SVID is for (e.g. the broker's SPIFFE ID); repeat for several.",
)
@click.option("--spiffe-id", help="Which identity, when several entries match this process.")
@json_option
def fetch(
    state_dir: Path, socket: Path | None, audiences: tuple[str, ...], spiffe_id: str | None, as_json: bool
) -> None:
    """Print one JWT-SVID (just the token, for `$(...)` in scripts)."""
    path = _socket(state_dir, socket)
    svids = run(lambda: fetch_svids(path, audience=list(audiences), spiffe_id=spiffe_id), as_json)
    if len(svids) != 1:
        ids = ", ".join(s["spiffe_id"] for s in svids)
        raise click.UsageError(f"several identities match this process ({ids}); choose one with --spiffe-id")
    output(svids[0], as_json, lambda d: click.echo(d["svid"]))


@svid.command("bundle")
@state_dir_option
@socket_option
def bundle(state_dir: Path, socket: Path | None) -> None:
    """Print the broker's JWT bundle (JWKS by trust domain) as JSON."""
    path = _socket(state_dir, socket)
    click.echo(json.dumps(run(lambda: fetch_bundles(path)), indent=2))


def register(main: click.Group) -> None:
    main.add_command(svid)

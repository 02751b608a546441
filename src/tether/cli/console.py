"""`tether console`: a one-time login link to the operator console for the user at the machine."""

from __future__ import annotations

from pathlib import Path

import click

from tether.cli._common import admin_socket, console, json_option, output, run, state_dir_option
from tether.server.admin import call


@click.command("console")
@state_dir_option
@json_option
def console_link(state_dir: Path, as_json: bool) -> None:
    """Print a one-time link that signs you in to the console (valid 60 s, single use).

    The broker checks over the admin socket that you run as its user (or root) and
    names you by uid in the audit log. Open the link in a browser on this machine, or
    configure `[console.oidc]` for operators elsewhere (docs/console.md).
    """
    data = run(lambda: call(admin_socket(state_dir), "console.login_link"), as_json)
    output(
        data,
        as_json,
        lambda d: console.print(
            f"Open within {d['expires_in']} s (works once):\n{d['url']}", highlight=False, soft_wrap=True
        ),
    )


def register(main: click.Group) -> None:
    main.add_command(console_link)

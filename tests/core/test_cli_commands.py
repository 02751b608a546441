"""The `tether` command loads its groups lazily: the table of commands stays complete."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import click

import tether.cli
from tether.cli import _COMMANDS, main

#: Modules whose register() adds to a group of another module, not to `tether` itself.
SUBGROUP_MODULES = {
    "secrets_broker",  # `tether secrets import|rotate|inventory`
    "store_backup",  # `tether store backup|restore|check`
}


def test_every_command_group_module_is_in_the_table():
    """Each cli module with register() is listed, under exactly the commands it adds."""
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(tether.cli.__path__):
        module = importlib.import_module(f"tether.cli.{info.name}")
        if not hasattr(module, "register") or info.name in SUBGROUP_MODULES:
            continue
        group = click.Group("probe")
        module.register(group)
        found.update(dict.fromkeys(group.commands, info.name))
    assert found == _COMMANDS


def test_help_lists_every_command():
    """`tether --help` names every command of the table."""
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(_COMMANDS)
    assert all(main.get_command(ctx, name) is not None for name in _COMMANDS)


def test_an_admin_command_does_not_load_the_store_or_the_policy_engine():
    """`tether task list` imports neither SQLAlchemy nor cedarpy (it only talks to the socket)."""
    script = (
        "import sys; sys.argv = ['tether', 'task', 'list', '--state-dir', '/nonexistent']\n"
        "from tether.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'cedarpy', 'starlette'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr

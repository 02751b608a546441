"""The ``tether`` command. One module per command group; each adds itself to ``main``."""

from __future__ import annotations

import importlib

import click

#: Each command → the module (``tether.cli.<module>``) whose ``register(main)`` adds it.
#: A module is imported only when one of its commands runs (``--help`` imports them all),
#: so ``tether task list`` loads the admin client, not the policy engine and the store.
#: A new command group: add its commands here.
_COMMANDS = {
    "init": "serve",
    "serve": "serve",
    "up": "serve",
    "task": "tasks",
    "revoke": "tasks",
    "approvals": "approvals",
    "approve": "approvals",
    "reject": "approvals",
    "policy": "policy",
    "audit": "audit",
    "keys": "keys",
    "workload": "workload",
    "svid": "svid",
    "gateway": "gateway",
    "mcp": "mcp",
    "demo": "demo",
    "leases": "leases",
    "secrets": "secrets",
    "report": "report",
    "connectors": "connectors",
    "console": "console",
    "store": "store",
}


class _LazyGroup(click.Group):
    """A group whose subcommands' modules are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            importlib.import_module(f"tether.cli.{_COMMANDS[cmd_name]}").register(self)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="tether")
def main() -> None:
    """Tether: a runtime access broker for AI agents.

    Agents prove what they are (SPIFFE), open a task for one purpose, and every action
    they take is decided at that moment by Cedar policy. Credentials never outlive the
    task; everything lands in a tamper-evident audit log.

    Start with `tether up`, then see `tether COMMAND --help`.
    """

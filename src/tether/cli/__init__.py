"""The ``tether`` command. One module per command group; each adds itself to ``main``."""

from __future__ import annotations

import click

from tether.cli import (
    approvals,
    audit,
    connectors,
    console,
    demo,
    gateway,
    keys,
    leases,
    mcp,
    policy,
    report,
    secrets,
    serve,
    store,
    svid,
    tasks,
    workload,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tether")
def main() -> None:
    """Tether: a runtime access broker for AI agents.

    Agents prove what they are (SPIFFE), open a task for one purpose, and every action
    they take is decided at that moment by Cedar policy. Credentials never outlive the
    task; everything lands in a tamper-evident audit log.

    Start with `tether up`, then see `tether COMMAND --help`.
    """


_GROUPS = (
    serve,
    tasks,
    approvals,
    policy,
    audit,
    keys,
    workload,
    svid,
    gateway,
    mcp,
    demo,
    leases,
    secrets,
    report,
    connectors,
    console,
)
for module in _GROUPS:
    module.register(main)
store.register(main)

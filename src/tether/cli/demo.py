"""`tether demo`: the whole idea in one command (see `tether.demo.pipeline`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.panel import Panel

from tether.cli._common import console

_ICON = {
    "ok": "[green]✓[/]",
    "denied": "[red]✗ denied[/]",
    "approval": "[yellow]⏸ approval[/]",
    "revoked": "[magenta]⊘ revoked[/]",
    "failed": "[bold red]✗ FAILED[/]",
}
# Details worth a line each in the story; everything is in --json.
_SHOW = (
    "url",
    "environment",
    "policy",
    "spiffe_ids",
    "human",
    "request",
    "task_id",
    "intent",
    "reader",
    "notifier",
    "decision_id",
    "lease_id",
    "credential_expires_in",
    "crm_status",
    "customer",
    "tools_visible",
    "result",
    "approval_id",
    "approved_by",
    "refunded_cents",
    "subtree",
    "seen_after_seconds",
    "leases",
    "events",
    "chains",
    "reasons",
    "code",
    "message",
)


class RichReporter:
    def __init__(self) -> None:
        self.n = 0

    def step(self, step: Any) -> None:
        if step.key in ("trace", "verify") and step.status == "ok" and step.key == "trace":
            return
        self.n += 1
        console.print(
            f"\n[bold]{self.n:>2}.[/] {_ICON.get(step.status, step.status)} [bold]{step.title}[/] "
            f"[dim]({step.seconds:.2f}s)[/]",
            highlight=False,
        )
        for key in _SHOW:
            if key in step.detail and step.detail[key] not in (None, [], {}):
                value = step.detail[key]
                text = json.dumps(value, default=str) if isinstance(value, list | dict) else str(value)
                console.print(f"      [dim]{key}[/] {text}", highlight=False, soft_wrap=True)

    def trace(self, trace: Any) -> None:
        from tether.audit.trace import render_tree

        console.print()
        console.print(Panel(render_tree(trace), title="chain of autonomy (tether audit trace)", expand=False))


class JsonReporter:
    def step(self, step: Any) -> None:
        pass

    def trace(self, trace: Any) -> None:
        pass


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON instead of the story.")
@click.option("--keep", is_flag=True, help="Keep the temporary state directory for `tether audit …`.")
def demo(as_json: bool, keep: bool) -> None:
    """Run a multi-agent support-triage pipeline against a real broker, end to end.

    Starts a broker on a temporary state directory, a CRM service that accepts only
    tether credentials and an MCP server behind the tether MCP gateway; then a scripted
    (no LLM) orchestrator delegates to a reader and a notifier. No network, under a minute.
    """
    from tether.demo.pipeline import run_pipeline

    if not as_json:
        console.print(
            Panel.fit(
                "[bold]tether demo[/] — the task is the unit of authority\n"
                "an orchestrator, a reader and a notifier handle one support ticket",
                border_style="cyan",
            )
        )
    result = run_pipeline(JsonReporter() if as_json else RichReporter(), keep=keep)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        verdict = "[green]demo complete[/]" if result.ok else "[bold red]demo failed[/]"
        console.print(
            f"\n{verdict} in {result.wall_seconds:.1f}s"
            + (f" — state kept in {Path(result.state_dir)}" if keep else "")
        )
    if not result.ok:
        raise SystemExit(1)


def register(main: click.Group) -> None:
    main.add_command(demo)

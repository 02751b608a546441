"""How many workers a policy change reached (`tether policy reload|shadow|promote` under
`tether serve --workers N`): the reply's ``workers`` (``tether.server.policy_ops._report``)
as one line per worker, naming every worker that did not apply it."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from tether.cli._common import console


def on_workers(workers: dict[str, Any] | None) -> str:
    """`` on A of T workers`` (empty for a single-process broker, which has no report)."""
    return f" on {workers['applied']} of {workers['total']} workers" if workers else ""


def all_applied(workers: dict[str, Any] | None) -> bool:
    return not workers or workers["applied"] == workers["total"]


def mark(workers: dict[str, Any] | None) -> str:
    return "[green]✓[/]" if all_applied(workers) else "[red]✗[/]"


def print_workers(workers: dict[str, Any] | None, key: str) -> None:
    """One line per worker: what it has in force (``key`` of its result), or why it did not
    apply the change; then what to do when one did not."""
    if not workers:
        return
    for r in workers.get("results", []):
        pid = f" (pid {r['pid']})" if r.get("pid") else ""
        if "error" in r:
            err = r.get("error") or {}
            line = f"  [red]✗[/] worker {r['worker']}{pid} did not apply it: " + escape(
                f"{err.get('code', '?')}: {err.get('message', '')}"
            )
        else:
            line = f"  [green]✓[/] worker {r['worker']}{pid}: " + escape(str(r.get(key) or "none"))
        console.print(line, highlight=False, soft_wrap=True)
    if not all_applied(workers):
        console.print(
            "[yellow]![/] not every worker applied the change: check the broker's log and run the "
            "command again (or restart the broker)",
            highlight=False,
            soft_wrap=True,
        )

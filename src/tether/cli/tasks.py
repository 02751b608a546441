"""`tether task list|show|close` and `tether revoke`."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.tree import Tree

from tether.cli._common import (
    admin_socket,
    console,
    err_console,
    json_option,
    output,
    print_rows,
    run,
    state_dir_option,
)
from tether.server.admin import call


def when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


_STATE_STYLE = {"active": "green", "closed": "dim", "expired": "yellow", "revoked": "red"}


@click.group()
def task() -> None:
    """Inspect and close tasks."""


@task.command("list")
@state_dir_option
@click.option("--state", type=click.Choice(["active", "closed", "expired", "revoked"]))
@click.option("--agent", help="Only tasks of this SPIFFE ID.")
@json_option
def list_(state_dir: Path, state: str | None, agent: str | None, as_json: bool) -> None:
    """List recent tasks."""
    rows = run(lambda: call(admin_socket(state_dir), "task.list", {"state": state, "agent": agent}), as_json)

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print("no tasks")
            return
        print_rows(
            ("task", "agent", "intent", "state", "depth", "expires (UTC)"),
            [
                (
                    r["task_id"],
                    r["agent"],
                    r["intent"],
                    f"[{_STATE_STYLE.get(r['state'], '')}]{r['state']}[/]",
                    str(r["depth"]),
                    when(r["expires_at"]),
                )
                for r in rows
            ],
            ids=("task",),
        )

    output(rows, as_json, render)


@task.command("show")
@state_dir_option
@click.argument("task_id")
@json_option
def show(state_dir: Path, task_id: str, as_json: bool) -> None:
    """Show a task: state, scope, parent, children and drift from its baseline."""
    data = run(lambda: call(admin_socket(state_dir), "task.show", {"task_id": task_id}), as_json)

    def render(d: dict[str, Any]) -> None:
        tree = Tree(f"[bold]{d['task_id']}[/] [{_STATE_STYLE.get(d['state'], '')}]{d['state']}[/]")
        tree.add(f"agent {d['agent']}")
        tree.add(f"intent {d['intent']}  depth {d['depth']}  expires {when(d['expires_at'])} UTC")
        if d.get("delegator"):
            tree.add(f"on behalf of {d['delegator']['sub']} ({d['delegator']['iss']})")
        if d.get("parent_id"):
            tree.add(f"parent {d['parent_id']}")
        scope = tree.add("scope")
        for g in d["scope"]:
            scope.add(f"{g['action']} → {g['resource']}")
        if d.get("children"):
            kids = tree.add("children")
            for c in d["children"]:
                kids.add(f"{c['task_id']} {c['agent']} {c['state']}")
        if d.get("drift"):
            _drift(tree, d["drift"])
        console.print(tree)

    output(data, as_json, render)


def _drift(tree: Tree, drift: dict[str, Any]) -> None:
    base = drift["baseline"]
    if base["cold_start"]:
        head = f"drift: cold start ({base['tasks']} of {base['min_tasks']} closed tasks learnt), scores 0"
        tree.add(head)
        return
    style = "red" if drift["max_score"] >= 60 else "yellow" if drift["max_score"] else "green"
    node = tree.add(
        f"drift [{style}]max score {drift['max_score']}[/] over {drift['scored_decisions']} decisions; "
        f"baseline of {base['tasks']} closed tasks, {len(base['pairs'])} actions, "
        f"peak {base['peak_per_minute']}/min"
    )
    for n in drift["new_actions"]:
        node.add(f"[red]new for this intent[/] {n['action']} → {n['resource']}")


@task.command("close")
@state_dir_option
@click.argument("task_id")
@json_option
def close(state_dir: Path, task_id: str, as_json: bool) -> None:
    """Close a task and every task it delegated to."""
    data = run(lambda: call(admin_socket(state_dir), "task.close", {"task_id": task_id}), as_json)
    output(data, as_json, lambda d: console.print(f"[green]✓[/] closed {len(d['closed'])} task(s)"))


@click.command()
@state_dir_option
@click.option("--task", "task_id", help="Revoke this task and its descendants.")
@click.option("--agent", help="Revoke every active task of this SPIFFE ID.")
@click.option("--delegator", help="Revoke every task run on behalf of this subject.")
@click.option("--all", "everything", is_flag=True, help="Kill switch: revoke every active task.")
@json_option
def revoke(
    state_dir: Path,
    task_id: str | None,
    agent: str | None,
    delegator: str | None,
    everything: bool,
    as_json: bool,
) -> None:
    """Revoke tasks now: their tokens stop working and their credentials are revoked.

    Tasks end in committed batches (whole trees), with progress; if interrupted, run the
    same command again: it ends what is left."""
    if sum(bool(x) for x in (task_id, agent, delegator, everything)) != 1:
        raise click.UsageError("give exactly one of --task, --agent, --delegator or --all")
    args = {"task_id": task_id, "agent": agent, "delegator": delegator, "all": everything}
    if task_id:
        data = run(lambda: call(admin_socket(state_dir), "revoke", args), as_json)
    else:
        data = run(lambda: _revoke_in_batches(state_dir, args, as_json), as_json)
    output(data, as_json, lambda d: console.print(f"[green]✓[/] revoked {len(d['revoked'])} task(s)"))


def _revoke_in_batches(state_dir: Path, args: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """One admin call per batch, so each is bounded and progress shows between them."""
    revoked: list[str] = []
    batches = 0
    with Progress(
        TextColumn("revoking"), BarColumn(), MofNCompleteColumn(), console=err_console,
        disable=as_json, transient=True,
    ) as bar:  # fmt: skip
        job = bar.add_task("revoke", total=None)
        try:
            while True:
                done = call(admin_socket(state_dir), "revoke", {**args, "max_batches": 1})
                revoked.extend(done["revoked"])
                batches += 1
                bar.update(job, completed=len(revoked), total=len(revoked) + int(done["remaining"]))
                if not done["remaining"] or not done["revoked"]:
                    break
        except KeyboardInterrupt:
            bar.stop()
            err_console.print(f"interrupted after {len(revoked)} task(s) in {batches} committed batch(es); "
                              "run the same command again to revoke the rest")  # fmt: skip
            sys.exit(130)
    return {"revoked": revoked, "batches": batches}


def register(main: click.Group) -> None:
    main.add_command(task)
    main.add_command(revoke)

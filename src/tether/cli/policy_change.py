"""`tether policy replay|shadow|promote`: see what a policy change would do before it acts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tether.audit.masking import salt_from_master_key
from tether.audit.query import parse_time
from tether.catalog import load_catalog
from tether.cli._common import admin_socket, console, err_console, json_option, output, run, state_dir_option
from tether.cli._workers_report import all_applied, mark, on_workers, print_workers
from tether.config import Settings, load_settings
from tether.errors import Unavailable
from tether.identity.keys import MASTER_KEY_ENV, MASTER_KEY_FILE, load_master_key
from tether.policy import load_schema
from tether.policy.analysis import load_checked
from tether.policy.replay import Replayer, ReplayReport
from tether.policy.replay_window import Job, count, jobs_default, replay_window
from tether.server.admin import call
from tether.store.db import Database

#: Exit codes of `replay` beside 0 (done) and 1 (error): the CI gate's answers.
EXIT_FLIPS = 4
EXIT_NOTHING = 5


def _salt(settings: Settings) -> bytes | None:
    """The digest salt, without ever creating a master key (replay writes nothing)."""
    if not os.environ.get(MASTER_KEY_ENV) and not (settings.state_dir / MASTER_KEY_FILE).exists():
        return None
    return salt_from_master_key(load_master_key(settings.state_dir))


def _no_store(url: str) -> None:
    raise Unavailable(f"no store at `{url}`; pass `--store URL` or `--state-dir`", code="store_unavailable")


def _render(d: dict[str, Any]) -> None:
    skipped = d["not_replayable"]
    console.print(
        f"replayed [bold]{d['replayed']}[/] of {d['decisions']} decisions against "
        f"{d['candidate_version']} in {d['seconds']} s"
        + (f" ({d['rate_per_second']}/s)" if d["rate_per_second"] else "")
        + f"; {d['evaluated']} distinct requests asked of Cedar",
        highlight=False,
    )
    if skipped:
        why = {
            "before_v3": "recorded before decision inputs were kept (event schema < 3)",
            "before_policy": "decided before policy (token, scope, task state, arguments)",
            "malformed_input": "with an input this version cannot read",
        }
        for k, n in skipped.items():
            console.print(f"[yellow]![/] {n} not replayable: {why.get(k, k)}", highlight=False)
    if d["inexact"]:
        console.print(
            f"[yellow]![/] {d['inexact']} read a masked value no policy literal matches: exact for "
            "equality only (see docs/policy-change.md)",
            highlight=False,
        )
    if d["catalog_changed"]:
        console.print(
            f"[yellow]![/] {d['catalog_changed']} were decided over another catalog version", highlight=False
        )
    if not d["flips"]:
        console.print("[green]✓[/] no decision changes")
        return
    console.print(f"[red]{d['flips']} flips[/]: " + ", ".join(f"{k} {n}" for k, n in d["by_kind"].items()))
    t1 = _table("by policy", "policy", "flips", "kinds", "example decisions")
    for g in d["by_policy"]:
        t1.add_row(g["policy"], str(g["count"]), _kinds(g), "\n".join(g["examples"]))
    console.print(t1)
    t2 = _table("by agent and intent", "agent", "intent", "flips", "kinds", "example decisions")
    for g in d["by_agent_intent"]:
        t2.add_row(g["agent"], g["intent"], str(g["count"]), _kinds(g), "\n".join(g["examples"]))
    console.print(t2)
    t3 = _table("examples", "decision", "change", "action on resource", "recorded by", "candidate by")
    for e in d["examples"]:
        t3.add_row(
            e["decision_id"],
            e["kind"],
            f"{e['action']} {e['resource']}",
            ", ".join(e["recorded"]["policies"]) or "-",
            ", ".join(e["candidate"]["policies"]) or "-",
        )
    console.print(t3)


def _table(title: str, *columns: str) -> Table:
    t = Table(title=title)
    for name in columns:
        # Decision ids are copied into the next command: never cut them.
        t.add_column(name, no_wrap=name in ("decision", "example decisions"), overflow="fold")
    return t


def _kinds(g: dict[str, Any]) -> str:
    return ", ".join(f"{k} {n}" for k, n in g["by_kind"].items())


@click.command()
@click.argument("policy_dir", type=click.Path(path_type=Path))
@click.option("--since", default="7d", show_default=True, help="Start of the window: `7d`, `2h`, ISO 8601.")
@click.option("--until", help="End of the window [default: now].")
@click.option(
    "--catalog",
    "catalog_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Candidate catalog file [default: the state directory's].",
)
@click.option(
    "--max-flips",
    type=click.IntRange(min=0),
    help=f"Exit {EXIT_FLIPS} when more decisions than this change (and {EXIT_NOTHING} when none "
    "could be replayed): a gate for CI.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Worker processes for a long window [default: the cores available]; 1 replays in this "
    "process. Windows under 200,000 decisions are always replayed in this process.",
)
@click.option("--store", help="Store URL [default: the state directory's config].")
@state_dir_option
@json_option
def replay(
    policy_dir: Path,
    since: str,
    until: str | None,
    catalog_file: Path | None,
    max_flips: int | None,
    jobs: int | None,
    store: str | None,
    state_dir: Path,
    as_json: bool,
) -> None:
    """Decide every recorded decision in the window again with the policies in POLICY_DIR.

    Reports the decisions whose outcome would change (allow→deny, deny→allow,
    →approval_required), grouped by the policies that make the difference and by agent
    and intent, with example decision ids. Reads the audit log only; writes nothing.

    \b
    tether policy replay ./candidate --since 7d
    tether policy replay ./candidate --catalog new-catalog.yaml --max-flips 0 --json
    """
    settings: Settings = run(lambda: load_settings(state_dir, overrides={"store": store}), as_json)
    schema = load_schema()
    catalog_path = (catalog_file or settings.catalog_path).absolute()
    catalog = run(lambda: load_catalog(catalog_path), as_json)
    # The reload's checks and messages (analysis warnings are reported, not refused).
    bundle, analysis = run(lambda: load_checked(policy_dir, schema, catalog), as_json)
    start = run(lambda: parse_time(since), as_json)
    end = run(lambda: parse_time(until, field="until"), as_json) if until else None
    salt = _salt(settings)
    replayer = Replayer(bundle, catalog, schema, salt=salt, policy_texts=bundle.sources.values())
    url = settings.store_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        # Opening it would create an empty database: replay never writes.
        run(lambda: _no_store(url), as_json)
    job = Job(
        str(policy_dir.absolute()), bundle.version, str(catalog_path), replayer.catalog_version, url, salt
    )
    db = Database(url)
    try:
        total = run(lambda: count(db, start, end), as_json)
        began = time.perf_counter()

        def go(progress: Callable[[int], None] | None) -> ReplayReport:
            n = jobs or jobs_default()
            return replay_window(replayer, db, start, end, total=total, jobs=n, job=job, progress=progress)

        if as_json or not err_console.is_terminal:
            report = run(lambda: go(None), as_json)
        else:
            columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=err_console, transient=True) as bar:
                task = bar.add_task("replay", total=total)
                report = run(lambda: go(lambda n: bar.advance(task, n)), as_json)
        report.seconds = time.perf_counter() - began
    finally:
        db.dispose()
    data = report.to_dict()
    data["window"] = {"since": start, "until": end}
    data["warnings"] = [w.describe() for w in analysis.warnings]
    if not report.replayed:
        data["message"] = "no replayable decisions in the window"
    output(data, as_json, _render_or_empty)
    if max_flips is not None:
        if not report.replayed:
            raise SystemExit(EXIT_NOTHING)
        if report.flips > max_flips:
            raise SystemExit(EXIT_FLIPS)


def _render_or_empty(d: dict[str, Any]) -> None:
    for w in d["warnings"]:
        console.print(f"[yellow]warning[/] {w}", highlight=False, soft_wrap=True)
    if not d["replayed"]:
        console.print(f"[yellow]![/] no replayable decisions in the window ({d['decisions']} recorded)")
        for k, n in d["not_replayable"].items():
            console.print(f"  {n} {k.replace('_', ' ')}", highlight=False)
        return
    _render(d)


@click.command()
@click.argument("directory", required=False)
@state_dir_option
@json_option
def shadow(directory: str | None, state_dir: Path, as_json: bool) -> None:
    """Evaluate the policies in DIRECTORY beside the enforced ones (`off` to stop).

    Every decision is also decided by the shadow set; where the two differ a
    `policy.shadow_diverged` audit event is written. Only the enforced set ever acts.
    Without DIRECTORY: show the shadow set and its counters.
    """
    args: dict[str, Any] = {}
    if directory is not None:
        args["directory"] = directory if directory == "off" else str(Path(directory).absolute())
    data = run(lambda: call(admin_socket(state_dir), "policy.shadow", args), as_json)

    def render(d: dict[str, Any]) -> None:
        for w in d.get("warnings", []):
            console.print(f"[yellow]warning[/] {w}", highlight=False, soft_wrap=True)
        workers = d.get("workers")
        lead = f"{mark(workers)} " if workers else ""
        if d["shadow"] is None:
            console.print(
                f"{lead}no shadow set{on_workers(workers)}; enforced {d['enforced_version']}", highlight=False
            )
        else:
            c = d["counters"]
            console.print(
                f"{lead}shadow [bold]{d['shadow_version']}[/] ({d['shadow']}) beside enforced "
                f"{d['enforced_version']}{on_workers(workers)}: "
                f"{c['evaluated']} decisions, {c['diverged']} diverged, {c['errors']} errors",
                highlight=False,
                soft_wrap=True,
            )
            for k, n in c["by_kind"].items():
                console.print(f"  {k} {n}", highlight=False)
        print_workers(workers, "shadow_version")

    output(data, as_json, render)
    if not all_applied(data.get("workers")):
        raise SystemExit(1)  # the workers do not shadow the same set (docs/troubleshooting.md)


@click.command()
@state_dir_option
@json_option
def promote(state_dir: Path, as_json: bool) -> None:
    """Make the shadow set the enforced one (through the same checks as a reload).

    Its files replace the policy directory's and the broker reloads; if the reload
    refuses, the previous files are restored and the previous set stays in force.
    """
    data = run(lambda: call(admin_socket(state_dir), "policy.promote"), as_json)

    def render(d: dict[str, Any]) -> None:
        workers = d.get("workers")
        console.print(
            f"{mark(workers)} policy {d['policy_version']} in force{on_workers(workers)} "
            f"(was {d['previous_version']})",
            highlight=False,
        )
        print_workers(workers, "policy_version")

    output(data, as_json, render)
    if not all_applied(data.get("workers")):
        raise SystemExit(1)  # some workers still enforce the previous set: the promote is not done


def attach(group: click.Group) -> None:
    for command in (replay, shadow, promote):
        group.add_command(command)

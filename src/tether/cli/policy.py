"""`tether policy validate|test|reload`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from tether.catalog import load_catalog
from tether.cli import policy_change
from tether.cli._common import admin_socket, console, json_option, output, run, state_dir_option
from tether.cli._workers_report import all_applied, mark, on_workers, print_workers
from tether.policy import load_schema, run_cases
from tether.policy.analysis import load_checked
from tether.server.admin import call


@click.group()
def policy() -> None:
    """Validate, test and reload Cedar policies."""


@policy.command()
@click.argument("policy_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--catalog",
    "catalog_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Catalog to check references against [default: the state directory's, if any].",
)
@click.option("--strict", is_flag=True, help="Treat analysis warnings as errors (exit 1).")
@state_dir_option
@json_option
def validate(
    policy_dir: Path, catalog_file: Path | None, strict: bool, state_dir: Path, as_json: bool
) -> None:
    """Validate every *.cedar file in POLICY_DIR against the Tether schema, then analyze it.

    Warnings name the file, line and column of references the catalog does not define,
    actions no request names, rules that can never match, permits a forbid always
    overrides and @approval forbids a granted approval cannot lift.
    """
    default_catalog = state_dir / "catalog.yaml"
    path = catalog_file or (default_catalog if default_catalog.is_file() else None)
    cat = run(lambda: load_catalog(path), as_json) if path else None
    bundle, analysis = run(lambda: load_checked(policy_dir, load_schema(), cat), as_json)
    refused = strict and bool(analysis.warnings)
    data = {
        "ok": not refused,
        "version": bundle.version,
        "files": list(bundle.files),
        "policies": len(bundle.policies),
        **analysis.to_dict(),
    }

    def render(d: dict[str, Any]) -> None:
        for w in analysis.warnings:
            console.print(f"[yellow]![/] {escape(w.describe())}", highlight=False, soft_wrap=True)
        for note in analysis.notes:
            console.print(f"[dim]note: {escape(note)}[/]", highlight=False, soft_wrap=True)
        warned = f", {len(analysis.warnings)} warning(s)" if analysis.warnings else ""
        count = f"{d['policies']} policies in {len(d['files'])} files"
        if refused:
            console.print(f"[red]✗[/] {count}: {len(analysis.warnings)} warning(s) and --strict")
        else:
            console.print(f"[green]✓[/] {count} are valid ({d['version']}){warned}")

    output(data, as_json, render)
    if refused:
        raise SystemExit(1)


@policy.command("test")
@click.argument("cases", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--policies",
    "policy_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Policy directory [default: the state directory's].",
)
@click.option(
    "--catalog",
    "catalog_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Catalog file [default: the state directory's].",
)
@state_dir_option
@json_option
def test(
    cases: Path, policy_dir: Path | None, catalog_file: Path | None, state_dir: Path, as_json: bool
) -> None:
    """Run the YAML policy cases in CASES (a file or a directory)."""
    pdir = policy_dir or state_dir / "policies"
    cat = run(lambda: load_catalog(catalog_file or state_dir / "catalog.yaml"), as_json)
    report = run(lambda: run_cases(pdir, cat, cases), as_json)

    def render(_: Any) -> None:
        t = Table("", "case", "expected", "got")
        for r in report.results:
            mark = "[green]✓[/]" if r.passed else "[red]✗[/]"
            t.add_row(mark, f"{r.case.where} {r.case.name}", r.case.expect.value, r.result.outcome.value)
        console.print(t)
        for r in report.failures:
            console.print(f"[red]FAIL[/] {r.describe()}")
        console.print(report.summary())

    output(report.to_dict(), as_json, render)
    if not report.passed:
        raise SystemExit(1)


@policy.command()
@click.option("--strict", is_flag=True, help="Refuse the new set if analysis warns (the old one stays).")
@state_dir_option
@json_option
def reload(strict: bool, state_dir: Path, as_json: bool) -> None:
    """Reload the running broker's policies; on error the old set stays in force.

    Analysis warnings are printed (and recorded in the audit log); --strict refuses them.
    The catalog is read at start only: when it changed, this says that a restart is needed.
    Under `tether serve --workers N` every worker reloads; this says how many did, and
    exits 1 when one did not.
    """
    data = run(lambda: call(admin_socket(state_dir), "policy.reload", {"strict": strict}), as_json)

    def render(d: dict[str, Any]) -> None:
        for w in d.get("warnings") or []:
            where = f"{w['file']}:{w['line']}:{w['column']}"
            line = "[yellow]![/] " + escape(f"{where}: {w['message']} [{w['kind']}]")
            console.print(line, highlight=False, soft_wrap=True)
        workers = d.get("workers")
        console.print(f"{mark(workers)} policy {d['policy_version']} in force{on_workers(workers)}")
        print_workers(workers, "policy_version")
        if d.get("restart_needed"):
            console.print(f"[yellow]![/] {d['message']}", highlight=False, soft_wrap=True)

    output(data, as_json, render)
    if not all_applied(data.get("workers")):
        raise SystemExit(1)  # some workers still enforce the old set: the reload is not done


def register(main: click.Group) -> None:
    policy_change.attach(policy)  # replay, shadow, promote
    main.add_command(policy)

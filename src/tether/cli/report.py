"""`tether report`: compliance evidence computed from this deployment; `tether report verify`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether.cli._common import console, fail, json_option, output, run, state_dir_option
from tether.config import Settings, load_settings

_COLOR = {"met": "green", "partly met": "yellow", "not met": "red", "out of scope": "dim"}
_SHOW_IDS = 12
_FILES = ("report.json", "report.json.jws", "report.md", "report.html")


def _settings(state_dir: Path, store: str | None, as_json: bool) -> Settings:
    s: Settings = run(lambda: load_settings(state_dir, overrides={"store": store}), as_json)
    return s


def _status(s: str) -> str:
    return f"[{_COLOR.get(s, 'white')}]{s}[/]"


def _render_summary(report: dict[str, Any]) -> None:
    from tether.report.render import fmt_value

    w, s = report["window"], report["summary"]
    console.print(
        f"[bold]tether compliance report[/] {w['since_iso']} → {w['until_iso']} "
        f"([green]{s['met']} met[/], [yellow]{s['partly met']} partly met[/], "
        f"[red]{s['not met']} not met[/], [dim]{s['out of scope']} out of scope[/])",
        highlight=False,
    )
    ev = report["evidence"]
    for fw in report["frameworks"]:
        table = Table(title=fw["title"], title_justify="left", box=None, header_style="bold dim")
        for col in ("control", "title", "status", "evidence"):
            table.add_column(col, overflow="fold")
        for c in report["controls"]:
            if c["framework"] != fw["id"]:
                continue
            shown = ", ".join(f"{k.split('.', 1)[1]}={fmt_value(ev[k])}" for k in c.get("evidence", [])[:4])
            table.add_row(c["id"], c["title"], _status(c["status"]), shown or c.get("reason", "")[:60] + "…")
        console.print(table)
        if fw.get("note"):
            console.print(f"[dim]{fw['note']}[/]")


def _render_control(c: dict[str, Any]) -> None:
    from tether.report.render import fmt_value

    console.print(f"[bold]{c['id']}[/] {c['title']} — {_status(c['status'])}", highlight=False)
    for why in c["why"]:
        console.print(f"  [dim]{why}[/]", highlight=False, soft_wrap=True)
    if c.get("reason"):
        return
    console.print("  mechanisms: " + ", ".join(m["name"] for m in c["mechanisms"]), highlight=False)
    table = Table(box=None, header_style="bold dim")
    for col in ("evidence", "value", "source", "audit events"):
        table.add_column(col, overflow="fold")
    for m in c["evidence"]:
        ids = m["events"][:_SHOW_IDS]
        more = m["n_events"] - len(ids)
        table.add_row(
            f"{m['label']}\n[dim]{m['key']}[/]",
            fmt_value(m),
            m["source"],
            " ".join(ids) + (f" … +{more} more (--json has up to 200)" if more > 0 else ""),
        )
    console.print(table)


def _write(out: Path, report: dict[str, Any], settings: Settings) -> list[Path]:
    """report.json (the signed bytes), its detached JWS, Markdown and HTML."""
    from tether.identity.keys import KeyRing, load_master_key
    from tether.report.render import to_html, to_markdown
    from tether.report.signing import sign_report
    from tether.store.db import Database

    payload = (json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    db = Database(settings.store_url)
    try:
        keys = KeyRing(
            db,
            load_master_key(settings.state_dir),
            rotate_after=settings.keys.rotate_after_seconds,
            overlap=settings.keys.overlap_seconds,
        )
        keys.refresh()
        jws = sign_report(payload, keys)
    finally:
        db.dispose()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in _FILES]
    paths[0].write_bytes(payload)
    paths[1].write_text(jws + "\n")
    paths[2].write_text(to_markdown(report))
    paths[3].write_text(to_html(report))
    return paths


@click.group(invoke_without_command=True)
@state_dir_option
@click.option("--store", help="Store URL to read [default: the state directory's].")
@click.option(
    "--since", default="30d", show_default=True, help="Start of the window: `30d`, `12h`, ISO 8601 or epoch."
)
@click.option("--until", help="End of the window [default: now].")
@click.option(
    "--control", "control_id", help="Show one control (e.g. `ASI03`) with its evidence and event ids."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write report.json (+ its signature report.json.jws), report.md and report.html here.",
)
@click.option(
    "--mapping",
    "mapping_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Use this control mapping instead of the shipped one (it is validated the same way).",
)
@json_option
@click.pass_context
def report(
    ctx: click.Context,
    state_dir: Path,
    store: str | None,
    since: str,
    until: str | None,
    control_id: str | None,
    out: Path | None,
    mapping_file: Path | None,
    as_json: bool,
) -> None:
    """Compute compliance evidence from this deployment and map it to controls.

    Reads the audit log, tasks, credentials, registrations, config and policy files
    (read-only; the broker may be running) for the window, and gives each control of
    OWASP NHI Top 10 2025, OWASP Top 10 for Agentic Applications 2026, CSA MAESTRO,
    NIST AI RMF 1.0 and NIST SP 800-207 a status — met, partly met, not met, out of
    scope — by the rules of the shipped mapping, with the numbers behind it.

    \b
    tether report                       summary of every control (last 30 days)
    tether report --control ASI03       one control, its evidence and event ids
    tether report --out audit-2026-q1   signed JSON, Markdown and HTML files
    tether report verify report.json    check a report's signature
    """
    if ctx.invoked_subcommand is not None:
        return
    from tether.audit.query import parse_time
    from tether.report.build import build_report, collect, one_control
    from tether.report.mapping import load_mapping

    mapping = run(lambda: load_mapping(mapping_file), as_json)
    if control_id is not None and mapping.control(control_id) is None:
        from tether.errors import InvalidRequest

        known = ", ".join(c.id for c in mapping.controls)
        fail(
            InvalidRequest(f"unknown control `{control_id}`; one of {known}", code="unknown_control"), as_json
        )
    settings = _settings(state_dir, store, as_json)
    now = time.time()
    start = run(lambda: parse_time(since, now=now, field="since"), as_json)
    end = run(lambda: parse_time(until, now=now, field="until"), as_json) if until else now
    facts = run(lambda: collect(settings, since=start, until=end, now=now), as_json)
    doc: dict[str, Any] = build_report(settings, facts, mapping, generated_at=now)
    written = run(lambda: _write(out, doc, settings), as_json) if out is not None else []
    if control_id is not None:
        output(one_control(doc, control_id), as_json, _render_control)
    else:
        output(doc, as_json, _render_summary)
    if written and not as_json:
        console.print("[green]✓[/] wrote " + ", ".join(str(p) for p in written), highlight=False)


@report.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--signature",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The detached JWS [default: FILE.jws next to the report].",
)
@click.option(
    "--jwks",
    "jwks_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Broker public keys to trust (JWKS) [default: the keys in the state directory's store].",
)
@state_dir_option
@click.option("--store", help="Store URL holding the broker's public keys.")
@json_option
def verify(
    file: Path,
    signature: Path | None,
    jwks_file: Path | None,
    state_dir: Path,
    store: str | None,
    as_json: bool,
) -> None:
    """Check that FILE is a report signed by this broker and unchanged since (exit 1 if not).

    Needs only public keys: a JWKS file the auditor trusts (`--jwks`), or the store's
    signing keys (expired ones included, so an old report still verifies).
    """
    from tether.audit.checkpoint import load_jwks_file, store_jwks
    from tether.errors import Unauthenticated
    from tether.report.signing import header_kid, read_signed, verify_report
    from tether.store.db import Database

    payload, jws, sig = run(lambda: read_signed(file, signature), as_json)
    if jwks_file is not None:
        jwks = run(lambda: load_jwks_file(jwks_file), as_json)
    else:
        settings = _settings(state_dir, store, as_json)
        db = Database(settings.store_url)
        try:
            with db.read() as conn:
                jwks = store_jwks(conn)
        finally:
            db.dispose()
    try:
        doc = verify_report(payload, jws, jwks)
    except Unauthenticated as exc:
        result = {
            "ok": False,
            "file": str(file),
            "signature": str(sig),
            "code": exc.code,
            "message": exc.message,
        }
        output(
            result,
            as_json,
            lambda r: console.print(f"[red]✗ not verified[/] ({r['code']}): {r['message']}", highlight=False),
        )
        raise SystemExit(1) from None
    result = {
        "ok": True,
        "file": str(file),
        "signature": str(sig),
        "kid": header_kid(jws),
        "generated_at": doc.get("generated_at"),
        "window": doc.get("window"),
        "summary": doc.get("summary"),
    }

    def render(r: dict[str, Any]) -> None:
        w = r["window"] or {}
        console.print(
            f"[green]✓[/] {r['file']} is signed by key {r['kid']} and unchanged "
            f"(window {w.get('since_iso')} → {w.get('until_iso')}, generated {r['generated_at']})",
            highlight=False,
        )

    output(result, as_json, render)


def register(main: click.Group) -> None:
    main.add_command(report)

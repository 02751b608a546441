"""`tether audit …`: verify, trace, tail, search, export, checkpoint.

Every command reads the store directly, so it works with the broker stopped (point
`--store` at a copy to investigate it elsewhere). Rich output for people, `--json` for
tools; a broken log exits 1.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click
from rich.table import Table

from tether.audit.event import EVENT_TYPES, Event
from tether.cli._common import console, json_option, output, run, state_dir_option
from tether.config import Settings, load_settings
from tether.store.db import Database

store_option = click.option("--store", help="Store URL to read [default: the state directory's].")
type_choice = click.Choice(sorted(EVENT_TYPES))


def _settings(state_dir: Path, store: str | None, as_json: bool) -> Settings:
    s: Settings = run(lambda: load_settings(state_dir, overrides={"store": store}), as_json)
    return s


@contextmanager
def _db(settings: Settings) -> Iterator[Database]:
    db = Database(settings.store_url)
    try:
        yield db
    finally:
        db.dispose()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _events_table(events: list[Event]) -> Table:
    from tether.audit.trace import summarize

    table = Table(box=None, header_style="bold dim")
    for col in ("time (UTC)", "seq", "type", "agent", "task", "what"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(_when(e.ts), f"{e.chain}:{e.seq}", e.type, e.agent or "", e.task_id or "", summarize(e))
    return table


@click.group()
def audit() -> None:
    """Investigate the audit log: verify it, trace a task tree, search, tail, export."""


@audit.command()
@state_dir_option
@store_option
@click.option(
    "--checkpoints",
    "checkpoint_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Signed checkpoints kept outside the database (JSON Lines) to check the store "
    "against [default: `audit.checkpoint_file` when set].",
)
@click.option(
    "--jwks",
    "jwks_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify checkpoint signatures with this JWKS instead of the keys in the store.",
)
@json_option
def verify(
    state_dir: Path, store: str | None, checkpoint_file: Path | None, jwks_file: Path | None, as_json: bool
) -> None:
    """Walk every hash chain; report the first broken link with its seq (exit 1 when broken).

    Catches edited, deleted, reordered and inserted events, truncation after a checkpoint,
    a database rolled back behind a checkpoint kept elsewhere, and bad checkpoint signatures.
    Linear and streaming; works offline with the broker stopped.
    """
    from tether.audit.checkpoint import load_jwks_file, read_checkpoint_file
    from tether.audit.verify import VerifyReport, verify_database

    settings = _settings(state_dir, store, as_json)
    if checkpoint_file is None and settings.audit.checkpoint_file:
        p = Path(settings.audit.checkpoint_file)
        checkpoint_file = p if p.is_absolute() else settings.state_dir / p
    external = run(lambda: read_checkpoint_file(checkpoint_file), as_json) if checkpoint_file else []
    jwks = run(lambda: load_jwks_file(jwks_file), as_json) if jwks_file else None
    with _db(settings) as db:
        started = time.perf_counter()
        report: VerifyReport = run(lambda: verify_database(db, external=external, jwks=jwks), as_json)
        elapsed = time.perf_counter() - started

    def render(_: Any) -> None:
        for chain, n in report.chains.items():
            console.print(f"chain [bold]{chain}[/]: {n} events")
        for b in report.breaks:
            console.print(f"[red]✗ broken[/] chain {b.chain} at seq [bold]{b.seq}[/] ({b.kind}): {b.message}")
        if report.ok:
            console.print(
                f"[green]✓[/] audit log intact: {report.events} events, "
                f"{report.checkpoints} signed checkpoints ({elapsed:.2f}s)"
            )

    output(report.to_dict(), as_json, render)
    if not report.ok:
        raise SystemExit(1)


@audit.command()
@click.argument("task_id")
@state_dir_option
@store_option
@json_option
def trace(task_id: str, state_dir: Path, store: str | None, as_json: bool) -> None:
    """Rebuild the chain of autonomy of TASK_ID's whole tree.

    Shows delegator → agent → sub-agents, and under each task its decisions, approvals,
    credentials and forwarded calls in time order. Any task of the tree finds the whole
    tree. Events whose hash does not match are flagged TAMPERED (run `verify` for gaps).
    """
    from tether.audit.trace import Trace, build_trace, render_tree
    from tether.audit.verify import snapshot

    settings = _settings(state_dir, store, as_json)
    with _db(settings) as db:

        def go() -> Trace:
            with snapshot(db) as conn:
                return build_trace(conn, task_id)

        result: Trace = run(go, as_json)

    def render(_: Any) -> None:
        console.print(render_tree(result))
        console.print(f"[dim]{result.events} events[/]")
        if result.tampered:
            console.print(f"[red]✗ {len(result.tampered)} tampered event(s)[/]: run `tether audit verify`")

    output(result.to_dict(), as_json, render)
    if result.tampered:
        raise SystemExit(1)


def _filters(**kw: Any) -> Any:
    from tether.audit.query import EventFilter, parse_time

    since, until = kw.pop("since", None), kw.pop("until", None)
    return EventFilter(
        since=parse_time(since, field="since") if since else None,
        until=parse_time(until, field="until") if until else None,
        types=tuple(kw.pop("types", ()) or ()),
        **kw,
    )


def _print_events(events: list[Event], as_json: bool) -> None:
    output([e.to_dict() for e in events], as_json, lambda _: console.print(_events_table(events)))


@audit.command()
@state_dir_option
@store_option
@click.option("-n", "--lines", default=20, show_default=True, help="How many recent events to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they are committed.")
@click.option("--task", "task_id", help="Only events of this task.")
@click.option("--tree", is_flag=True, help="With --task: every task of its tree.")
@click.option("--type", "types", multiple=True, type=type_choice, help="Only this event type (repeatable).")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between polls with --follow.")
@click.option("--max-polls", type=int, hidden=True)  # bounds --follow in tests
@json_option
def tail(
    state_dir: Path,
    store: str | None,
    lines: int,
    follow: bool,
    task_id: str | None,
    tree: bool,
    types: tuple[str, ...],
    poll: float,
    max_polls: int | None,
    as_json: bool,
) -> None:
    """Show the most recent events; with --follow, keep printing new ones (JSON Lines with --json)."""
    from tether.audit.query import follow as follow_events
    from tether.audit.query import high_water
    from tether.audit.query import tail as tail_events

    settings = _settings(state_dir, store, as_json)
    flt = run(lambda: _filters(task_id=task_id, tree=tree, types=types), as_json)
    with _db(settings) as db:

        def first() -> tuple[list[Event], dict[str, int]]:
            with db.read() as conn:
                return tail_events(conn, flt, lines), high_water(conn)

        events, marks = run(first, as_json)
        if not follow:
            _print_events(events, as_json)
            return
        polls = [0]

        def stop() -> bool:
            polls[0] += 1
            return max_polls is not None and polls[0] > max_polls

        for e in [*events, *follow_events(db, flt, after=marks, poll_seconds=poll, stop=stop)]:
            if as_json:
                import json

                click.echo(json.dumps(e.to_dict(), ensure_ascii=False))
            else:
                console.print(_events_table([e]), end="")


@audit.command()
@state_dir_option
@store_option
@click.option("--agent", help="SPIFFE ID of the agent.")
@click.option("--resource", help="Catalog resource (e.g. `billing.refund`).")
@click.option(
    "--decision",
    "outcome",
    type=click.Choice(["allow", "deny", "approval_required"]),
    help="Decision outcome.",
)
@click.option("--type", "types", multiple=True, type=type_choice, help="Event type (repeatable).")
@click.option("--task", "task_id", help="Only events of this task.")
@click.option("--since", help="From this time: ISO 8601, `15m`, `2h`, `7d` or epoch seconds.")
@click.option("--until", help="Before this time (same forms as --since).")
@click.option("--limit", default=100, show_default=True, help="At most this many events.")
@json_option
def search(
    state_dir: Path,
    store: str | None,
    agent: str | None,
    resource: str | None,
    outcome: str | None,
    types: tuple[str, ...],
    task_id: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Find events by agent, resource, decision, type, task and time range (oldest first)."""
    from tether.audit.query import search as search_events

    settings = _settings(state_dir, store, as_json)
    flt = run(
        lambda: _filters(
            agent=agent,
            resource=resource,
            outcome=outcome,
            types=types,
            task_id=task_id,
            since=since,
            until=until,
        ),
        as_json,
    )
    with _db(settings) as db:

        def go() -> list[Event]:
            with db.read() as conn:
                return search_events(conn, flt, limit=limit)

        _print_events(run(go, as_json), as_json)


def _stream_all(db: Database, flt: Any) -> Iterator[Event]:
    """Every matching event in time order, in pages (constant memory for JSONL/OCSF)."""
    from tether.audit.query import search as search_events

    since = flt.since
    seen: set[tuple[str, int]] = set()
    while True:
        with db.read() as conn:
            page = search_events(conn, _replace(flt, since=since), limit=5000)
        fresh = [e for e in page if (e.chain, e.seq) not in seen]
        yield from fresh
        if len(page) < 5000 or not fresh:
            return
        # Next page from the last timestamp; events sharing it are skipped by key.
        since = page[-1].ts
        seen = {(e.chain, e.seq) for e in page if e.ts == since}


def _replace(flt: Any, **kw: Any) -> Any:
    from dataclasses import replace

    return replace(flt, **kw)


@audit.command()
@state_dir_option
@store_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "otel", "ocsf"]),
    default="jsonl",
    show_default=True,
    help="jsonl: events with hashes; otel: OpenTelemetry spans; ocsf: "
    "OCSF API Activity (6003) events for a SIEM.",
)
@click.option(
    "--output",
    "-o",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of stdout.",
)
@click.option(
    "--otlp-endpoint",
    help="With --format otel: send spans over OTLP/HTTP to this URL "
    "(e.g. http://collector:4318/v1/traces) instead of writing them.",
)
@click.option("--task", "task_id", help="Only this task's tree.")
@click.option("--since", help="From this time: ISO 8601, `15m`, `2h`, `7d` or epoch seconds.")
@click.option("--until", help="Before this time.")
def export(
    state_dir: Path,
    store: str | None,
    fmt: str,
    out_path: Path | None,
    otlp_endpoint: str | None,
    task_id: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Export events as JSON Lines, OpenTelemetry spans or OCSF events."""
    from tether.audit.export import to_jsonl, to_ocsf_lines

    settings = _settings(state_dir, store, False)
    flt = run(lambda: _filters(task_id=task_id, tree=bool(task_id), since=since, until=until))
    out: IO[str] = out_path.open("w") if out_path else sys.stdout
    try:
        with _db(settings) as db:
            events = _stream_all(db, flt)
            if fmt == "jsonl":
                n = run(lambda: to_jsonl(events, out))
            elif fmt == "ocsf":
                n = run(lambda: to_ocsf_lines(events, out))
            else:
                n = run(lambda: _otel(events, out, otlp_endpoint))
    finally:
        if out_path:
            out.close()
    click.echo(f"exported {n} {'spans' if fmt == 'otel' else 'events'}", err=True)


def _otel(events: Iterator[Event], out: IO[str], endpoint: str | None) -> int:
    from tether.audit import otel

    exporter = otel.otlp_exporter(endpoint) if endpoint else otel.JsonLinesSpanExporter(out)
    return otel.export_spans(events, exporter)


@audit.command()
@state_dir_option
@store_option
@click.option(
    "--file",
    "file_",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also append the checkpoints here [default: `audit.checkpoint_file` when set].",
)
@json_option
def checkpoint(state_dir: Path, store: str | None, file_: Path | None, as_json: bool) -> None:
    """Sign the current head of every chain now, store it and ship it like the broker does.

    Needs the master key (state directory or TETHER_MASTER_KEY) to sign.
    """
    from dataclasses import replace

    from sqlalchemy import select

    from tether.audit.checkpoint import Checkpoint, write_checkpoint
    from tether.identity.keys import KeyRing, load_master_key
    from tether.store import tables as t

    settings = _settings(state_dir, store, as_json)
    cfg = replace(settings.audit, checkpoint_file=str(file_)) if file_ else settings.audit
    with _db(settings) as db:

        def go() -> list[Checkpoint]:
            keys = KeyRing(
                db,
                load_master_key(settings.state_dir),
                rotate_after=settings.keys.rotate_after_seconds,
                overlap=settings.keys.overlap_seconds,
            )
            keys.refresh()
            with db.read() as conn:
                heads = conn.execute(
                    select(t.audit_chains.c.chain, t.audit_chains.c.head_seq, t.audit_chains.c.head_hash)
                ).all()
            return [
                write_checkpoint(db, keys, cfg, settings.state_dir, str(c), int(s), str(h), time.time())
                for c, s, h in heads
            ]

        cps: list[Checkpoint] = run(go, as_json)

    def render(_: Any) -> None:
        for cp in cps:
            console.print(
                f"[green]✓[/] checkpoint chain [bold]{cp.chain}[/] seq {cp.seq} "
                f"head {cp.hash[:16]}… (kid {cp.kid})"
            )
        if not cps:
            console.print("no audit chains yet")

    output([cp.to_dict() for cp in cps], as_json, render)


@audit.command()
@click.argument("event_ids", nargs=-1, required=True, metavar="CHAIN:SEQ...")
@state_dir_option
@store_option
@json_option
def show(event_ids: tuple[str, ...], state_dir: Path, store: str | None, as_json: bool) -> None:
    """Show audit events by id (`node-1:42`, as `tail` and `tether report` print them).

    `--json` prints each event whole, payload included, as it was hashed.
    """
    from sqlalchemy import select

    from tether.audit.verify import row_to_event
    from tether.errors import InvalidRequest, NotFound
    from tether.store.tables import audit_events as ae

    def parse(eid: str) -> tuple[str, int]:
        chain, _, seq = eid.rpartition(":")
        if not chain or not seq.isascii() or not seq.isdigit():
            raise InvalidRequest(f"`{eid}` is not an event id like `node-1:42`", code="invalid_event_id")
        return chain, int(seq)

    wanted = [run(functools.partial(parse, e), as_json) for e in event_ids]
    settings = _settings(state_dir, store, as_json)

    def go() -> list[Event]:
        out = []
        with _db(settings) as db, db.read() as conn:
            for chain, seq in wanted:
                row = conn.execute(select(ae).where(ae.c.chain == chain, ae.c.seq == seq)).first()
                if row is None:
                    raise NotFound(f"no audit event `{chain}:{seq}`", code="event_not_found")
                out.append(row_to_event(row._mapping))
        return out

    _print_events(run(go, as_json), as_json)


def register(main: click.Group) -> None:
    main.add_command(audit)

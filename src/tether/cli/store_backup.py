"""`tether store backup|restore|check`: copies of the store, and trusting one again.

A backup is a point in every writer's audit history: the head (seq, hash) of each chain
in the copy. ``backup`` signs a checkpoint of each of those heads and ships it like the
broker does (``audit.checkpoint_file`` / ``audit.checkpoint_url``), so the copy can later be
verified against checkpoints kept outside it. ``restore`` refuses a copy whose chains do
not verify against the external checkpoints up to its point; checkpoints *after* its
point describe events the restore discards: they are moved out of the local checkpoint
file into a ``.rolled-back-<time>`` file beside it and listed (the copies shipped
elsewhere keep them, so an investigator still sees the rollback for what it is).

PostgreSQL is backed up with ``pg_dump`` and restored with ``pg_restore``
(docs/operations.md); ``check`` then verifies the restored database the same way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether.audit.checkpoint import Checkpoint, read_checkpoint_file, write_checkpoint
from tether.audit.verify import VerifyReport, verify_database
from tether.cli._common import console, err_console, fail, json_option, output, run, state_dir_option
from tether.config import Settings, load_settings
from tether.errors import InvalidRequest
from tether.store import backup as bk
from tether.store import migrations
from tether.store.db import Database

_PG_HINT = (
    "PostgreSQL stores are copied with `pg_dump --format=custom` and restored with "
    '`pg_restore` (docs/operations.md, "Backup and restore"); then run '
    "`tether store check --store URL` on the restored database"
)
#: What a restore cannot undo, said every time (docs/operations.md explains each).
_AFTER_RESTORE = (
    "tasks, approvals and credentials issued after the backup point are unknown to the "
    "restored store: their tokens are refused (`token_unknown_task`); JWT credentials "
    "expire within `credentials.default_ttl_seconds`, and PostgreSQL roles minted after the "
    "point are dropped by the reaper's sweep once the broker runs"
)


def _settings(state_dir: Path, store: str | None, as_json: bool) -> Settings:
    s: Settings = run(lambda: load_settings(state_dir, overrides={"store": store}), as_json)
    return s


def _sqlite_file(s: Settings, as_json: bool) -> Path:
    path: Path | None = run(lambda: bk.sqlite_path(s.store_url), as_json)
    if path is None:
        fail(
            InvalidRequest(
                f"`tether store` copies only SQLite stores. {_PG_HINT}", code="backup_unsupported"
            ),
            as_json,
        )
        raise AssertionError  # fail() exits
    return path


def _checkpoint_file(s: Settings) -> Path | None:
    if not s.audit.checkpoint_file:
        return None
    p = Path(s.audit.checkpoint_file)
    return p if p.is_absolute() else s.state_dir / p


def _heads(url: str) -> list[bk.ChainHead]:
    db = Database(url)
    try:
        with db.guard():
            return bk.chain_heads(db)
    finally:
        db.dispose()


def _sign_heads(s: Settings, heads: Iterable[bk.ChainHead]) -> list[Checkpoint]:
    """Checkpoints of the copy's heads, stored in the live store and shipped from it."""
    from tether.identity.keys import KeyRing, load_master_key  # local: only backup signs

    db = Database(s.store_url, timeout_ms=s.limits.store_timeout_ms)
    try:
        keys = KeyRing(
            db,
            load_master_key(s.state_dir),
            rotate_after=s.keys.rotate_after_seconds,
            overlap=s.keys.overlap_seconds,
        )
        keys.refresh()
        now = time.time()
        return [write_checkpoint(db, keys, s.audit, s.state_dir, h.chain, h.seq, h.hash, now) for h in heads]
    finally:
        db.dispose()


def _split(
    external: list[Checkpoint], heads: list[bk.ChainHead]
) -> tuple[list[Checkpoint], list[Checkpoint]]:
    """External checkpoints at or before the copy's point in each chain, and those after it."""
    at = {h.chain: h.seq for h in heads}
    within = [cp for cp in external if cp.seq <= at.get(cp.chain, 0)]
    beyond = [cp for cp in external if cp.seq > at.get(cp.chain, 0)]
    return within, beyond


def _verify(url: str, external: list[Checkpoint]) -> VerifyReport:
    db = Database(url)
    try:
        with db.guard():
            return verify_database(db, external=external)
    finally:
        db.dispose()


def _last_by_chain(cps: Iterable[Checkpoint]) -> dict[str, dict[str, Any]]:
    last: dict[str, Checkpoint] = {}
    for cp in cps:
        if cp.chain not in last or cp.seq >= last[cp.chain].seq:
            last[cp.chain] = cp
    return {c: {"seq": cp.seq, "ts": cp.ts} for c, cp in sorted(last.items())}


def _lost(beyond: list[Checkpoint], heads: list[bk.ChainHead]) -> list[dict[str, Any]]:
    at = {h.chain: h.seq for h in heads}
    out: dict[str, dict[str, Any]] = {}
    for cp in beyond:
        d = out.setdefault(
            cp.chain, {"chain": cp.chain, "after_seq": at.get(cp.chain, 0), "to_seq": 0, "last_ts": 0.0}
        )
        d["to_seq"] = max(d["to_seq"], cp.seq)
        d["last_ts"] = max(d["last_ts"], cp.ts)
    return list(out.values())


def _heads_table(heads: list[bk.ChainHead]) -> Table:
    t = Table("chain", "head seq", "head hash")
    for h in heads:
        t.add_row(h.chain, str(h.seq), h.hash[:16] + "…")
    return t


def backup(
    state_dir: Path, store: str | None, file: Path, force: bool, checkpoint: bool, as_json: bool
) -> None:
    s = _settings(state_dir, store, as_json)
    source = _sqlite_file(s, as_json)
    run(lambda: bk.backup_sqlite(source, file, force=force), as_json)
    heads = run(lambda: _heads(bk.sqlite_url(file)), as_json)
    cps: list[Checkpoint] = run(lambda: _sign_heads(s, heads), as_json) if checkpoint else []
    data = {
        "file": str(file.absolute()),
        "bytes": file.stat().st_size,
        "created_at": time.time(),
        "heads": [{"chain": h.chain, "seq": h.seq, "hash": h.hash} for h in heads],
        "checkpoints": [cp.to_dict() for cp in cps],
        "checkpoint_file": str(_checkpoint_file(s) or ""),
    }

    def render(d: dict[str, Any]) -> None:
        console.print(f"[green]✓[/] backup written to [bold]{d['file']}[/] ({d['bytes']} bytes, mode 0600)")
        console.print(_heads_table(heads))
        if cps:
            where = (
                d["checkpoint_file"] or "the store only (set `audit.checkpoint_file` to keep one outside it)"
            )
            console.print(f"signed a checkpoint of each head: {where}")
        console.print("keep the master key apart from this file: it decrypts the signing keys inside")

    output(data, as_json, render)


def _trim_checkpoint_file(path: Path, beyond: list[Checkpoint]) -> Path | None:
    """Move ``beyond`` out of ``path`` into ``<path>.rolled-back-<time>`` (atomically)."""
    if not beyond:
        return None
    drop = {(cp.chain, cp.seq, cp.jws) for cp in beyond}
    keep = [cp for cp in read_checkpoint_file(path) if (cp.chain, cp.seq, cp.jws) not in drop]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = path.with_name(f"{path.name}.rolled-back-{stamp}")
    moved.write_text("".join(json.dumps(cp.to_dict(), separators=(",", ":")) + "\n" for cp in beyond))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(cp.to_dict(), separators=(",", ":")) + "\n" for cp in keep))
    os.replace(tmp, path)
    return moved


def restore(state_dir: Path, store: str | None, file: Path, yes: bool, as_json: bool) -> None:
    from tether.server.instance import claim  # local: only restore takes the broker's lock

    s = _settings(state_dir, store, as_json)
    target = _sqlite_file(s, as_json)
    # Held to the end: no broker may run on this state directory (or start) meanwhile.
    lock = run(lambda: claim(s.state_dir, "tether store restore"), as_json)
    try:
        run(lambda: bk.check_file(file), as_json)
        url = bk.sqlite_url(file)
        st = run(lambda: _schema(url), as_json)
        if st.state == "newer":
            fail(migrations.newer_error(st), as_json)
        heads = run(lambda: _heads(url), as_json)
        cp_file = _checkpoint_file(s)
        external = run(lambda: read_checkpoint_file(cp_file), as_json) if cp_file and cp_file.exists() else []
        within, beyond = _split(external, heads)
        report = run(lambda: _verify(url, within), as_json)
        if not report.ok:
            b = report.breaks[0]
            fail(
                InvalidRequest(
                    f"`{file}` does not verify: chain `{b.chain}` at seq {b.seq} ({b.kind}): {b.message}; "
                    "nothing was changed",
                    code="backup_invalid",
                    breaks=[x.to_dict() for x in report.breaks],
                ),
                as_json,
            )
        if not yes and not as_json:
            click.confirm(f"replace the store `{target}` with `{file}`?", abort=True, err=True)
        elif not yes:
            fail(InvalidRequest("restore replaces the store: pass --yes", code="invalid_request"), as_json)
        kept = run(lambda: bk.restore_sqlite(file, target), as_json)
        moved = run(lambda: _trim_checkpoint_file(cp_file, beyond), as_json) if cp_file else None
        after = run(lambda: _verify(s.store_url, within), as_json)
    finally:
        lock.release()
    data = {
        "restored_from": str(file.absolute()),
        "store": str(target),
        "previous_store_kept_as": str(kept) if kept else None,
        "heads": [{"chain": h.chain, "seq": h.seq, "hash": h.hash} for h in heads],
        "verified": after.to_dict(),
        "verified_against": _last_by_chain(within),
        "lost_after_backup_point": _lost(beyond, heads),
        "rolled_back_checkpoints_moved_to": str(moved) if moved else None,
        "note": _AFTER_RESTORE,
    }

    def render(d: dict[str, Any]) -> None:
        console.print(f"[green]✓[/] store [bold]{d['store']}[/] restored from {d['restored_from']}")
        if d["previous_store_kept_as"]:
            console.print(f"  the replaced store is kept as {d['previous_store_kept_as']}")
        console.print(_heads_table(heads))
        v = d["verified"]
        console.print(
            f"[green]✓[/] audit chains verify: {v['events']} events, {v['checkpoints']} signed checkpoints"
        )
        for chain, cp in d["verified_against"].items():
            console.print(f"  chain {chain}: last external checkpoint at seq {cp['seq']} matches")
        for lost in d["lost_after_backup_point"]:
            err_console.print(
                f"[yellow]![/] chain {lost['chain']}: events after seq {lost['after_seq']} "
                f"(checkpointed up to seq {lost['to_seq']}) are not in the backup; checkpoints moved to "
                f"{d['rolled_back_checkpoints_moved_to']}"
            )
        err_console.print(f"[yellow]![/] {d['note']}")

    output(data, as_json, render)


def _schema(url: str) -> migrations.SchemaStatus:
    db = Database(url)
    try:
        with db.guard():
            return migrations.status(db.engine)
    finally:
        db.dispose()


def check(state_dir: Path, store: str | None, checkpoint_file: Path | None, as_json: bool) -> None:
    s = _settings(state_dir, store, as_json)
    url = s.store_url
    path = run(lambda: bk.sqlite_path(url), as_json)
    if path is not None:
        run(lambda: bk.check_file(path), as_json)
    st = run(lambda: _schema(url), as_json)
    heads = run(lambda: _heads(url), as_json)
    cp_file = checkpoint_file or _checkpoint_file(s)
    external = run(lambda: read_checkpoint_file(cp_file), as_json) if cp_file and cp_file.exists() else []
    within, beyond = _split(external, heads)
    report = run(lambda: _verify(url, within), as_json)
    ok = report.ok and st.state != "newer"
    data = {
        "ok": ok,
        "store": url if path is None else str(path),
        "schema": st.to_dict(),
        "heads": [{"chain": h.chain, "seq": h.seq, "hash": h.hash} for h in heads],
        "verified": report.to_dict(),
        "verified_against": _last_by_chain(within),
        "checkpoints_after_this_copy": _lost(beyond, heads),
    }

    def render(d: dict[str, Any]) -> None:
        console.print(_heads_table(heads))
        console.print(f"schema revision {st.current or '(none)'} ({st.state})")
        for b in report.breaks:
            console.print(f"[red]✗ broken[/] chain {b.chain} at seq [bold]{b.seq}[/] ({b.kind}): {b.message}")
        for chain, cp in d["verified_against"].items():
            console.print(f"  chain {chain}: external checkpoint at seq {cp['seq']} matches")
        for later in d["checkpoints_after_this_copy"]:
            console.print(
                f"  chain {later['chain']}: checkpoints up to seq {later['to_seq']} are newer than this copy "
                f"(it ends at seq {later['after_seq']})"
            )
        if ok:
            console.print(
                f"[green]✓[/] the store verifies: {report.events} events, {report.checkpoints} checkpoints"
            )

    output(data, as_json, render)
    if not ok:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    """Add the three commands to `tether store`."""
    store_option = click.option("--store", help="Store URL [default: the state directory's].")

    @group.command("backup")
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @state_dir_option
    @store_option
    @click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
    @click.option(
        "--checkpoint/--no-checkpoint",
        default=True,
        show_default=True,
        help="Sign a checkpoint of each chain head of the copy and ship it (needs the master key).",
    )
    @json_option
    def backup_cmd(
        file: Path, state_dir: Path, store: str | None, force: bool, checkpoint: bool, as_json: bool
    ) -> None:
        """Copy a SQLite store to FILE while the broker runs (SQLite's online backup API).

        The copy is consistent (one snapshot), written atomically, mode 0600. Its audit
        chain heads are printed and, by default, checkpointed outside the store so that
        `tether store restore` can verify the copy later. PostgreSQL: use pg_dump (see
        docs/operations.md) and `tether store check`.
        """
        backup(state_dir, store, file, force, checkpoint, as_json)

    @group.command("restore")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @state_dir_option
    @store_option
    @click.option("--yes", is_flag=True, help="Do not ask before replacing the store.")
    @json_option
    def restore_cmd(file: Path, state_dir: Path, store: str | None, yes: bool, as_json: bool) -> None:
        """Replace the SQLite store with the backup FILE (the broker must be stopped).

        Refuses a FILE that is not an intact Tether store, whose schema is newer than this
        Tether, or whose audit chains do not verify against the external checkpoints
        (`audit.checkpoint_file`) up to its point. The replaced store is kept beside it.
        """
        restore(state_dir, store, file, yes, as_json)

    @group.command("check")
    @state_dir_option
    @store_option
    @click.option(
        "--checkpoints",
        "checkpoint_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="External checkpoints (JSON Lines) [default: `audit.checkpoint_file` when set].",
    )
    @json_option
    def check_cmd(state_dir: Path, store: str | None, checkpoint_file: Path | None, as_json: bool) -> None:
        """Check a copy of a store (a backup file, a restored PostgreSQL database).

        Integrity (SQLite), schema revision, chain heads, and the audit chains against the
        external checkpoints up to the copy's point; later checkpoints are listed, not
        failures (the copy is older). Exits 1 when anything does not verify.
        """
        check(state_dir, store, checkpoint_file, as_json)

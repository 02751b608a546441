"""Replay a window of the audit log, in one process or in several.

A long window is cut into chunks of consecutive decision events (by timestamp, at
boundaries the database computes) and the chunks are replayed by worker processes, each
with its own Cedar handles and store connection; their reports are merged in window
order, so the merged report is the one a single process writes: the same counts, and
the same example decisions, since each part keeps its first examples and the merge keeps
the first of those (see :meth:`ReplayReport.absorb`). A short window, or ``jobs=1``, is
replayed here: starting the workers costs an interpreter and Tether's imports (about 0.7 s
of CPU), more than a short window takes.

Workers are forked from a fork server that imported this module (``spawn`` where there is
none): no state of this process, its threads or its connections is inherited. Each loads
the candidate directory and catalog again and refuses to go on if their versions are not
the ones checked here. Nothing is written.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select, text

from tether.audit import event as ev
from tether.catalog import load_catalog
from tether.errors import PolicyError, TetherError, Unavailable
from tether.policy.loader import load_bundle, load_schema
from tether.policy.replay import Recorded, Replayer, ReplayReport, recorded_from_event
from tether.store import tables as t
from tether.store.db import Database

__all__ = ["PARALLEL_MIN", "Job", "count", "records", "replay_window"]

#: Fewer decisions than this are replayed in this process (workers would cost more).
PARALLEL_MIN = 200_000
_CHUNK_MIN = 5_000
_CHUNK_MAX = 50_000
_E = t.audit_events.c
_NUMBERED = (
    "SELECT ts FROM (SELECT ts, row_number() OVER (ORDER BY ts) AS n FROM audit_events "
    "WHERE type = :type AND ts >= :since{} ) AS numbered WHERE n > 1 AND (n - 1) % :size = 0 ORDER BY ts"
)
_CUTS = text(_NUMBERED.format(""))
_CUTS_UNTIL = text(_NUMBERED.format(" AND ts < :until"))


def _where(q: Any, since: float, until: float | None) -> Any:
    q = q.where(_E.type == ev.DECISION, _E.ts >= since)
    return q.where(_E.ts < until) if until is not None else q


def records(db: Database, since: float, until: float | None) -> Iterator[Recorded | str]:
    """The window's decisions in log order (a ``str`` says why one cannot be replayed)."""
    q = _where(select(_E.v, _E.payload, _E.decision_id, _E.agent), since, until)
    with db.read() as conn:
        rows = conn.execution_options(yield_per=2000).execute(q.order_by(_E.ts, _E.chain, _E.seq))
        loads = orjson.loads
        for v, payload, decision_id, agent in rows:
            yield recorded_from_event(int(v), loads(payload), decision_id, agent)


def count(db: Database, since: float, until: float | None) -> int:
    q = _where(select(func.count()).select_from(t.audit_events), since, until)
    with db.read() as conn:
        return int(conn.execute(q).scalar() or 0)


def boundaries(db: Database, since: float, until: float | None, size: int) -> list[float]:
    """Timestamps cutting the window into chunks of about ``size`` decisions: every
    ``size``-th decision's, numbered by the database (one pass, no rows sent back but
    the boundaries). Chunk i is ``[b[i], b[i+1])``; the last one ends at ``until``."""
    sql = _CUTS if until is None else _CUTS_UNTIL
    params: dict[str, Any] = {"type": ev.DECISION, "since": since, "size": size}
    if until is not None:
        params["until"] = until
    with db.read() as conn:
        cuts = [float(ts) for (ts,) in conn.execute(sql, params)]
    out = [since]
    for ts in cuts:
        if ts > out[-1]:  # equal timestamps stay in one chunk
            out.append(ts)
    return out


@dataclass(frozen=True)
class Job:
    """What a worker needs to replay a chunk as this process would."""

    policy_dir: str
    policy_version: str
    catalog_file: str
    catalog_version: str
    store_url: str
    salt: bytes | None


_worker: tuple[Replayer, Database] | str | None = None
_CHANGED = "the candidate directory or catalog changed during the replay; run it again"


def _start(job: Job) -> None:
    """Worker set-up. A failure is kept and raised by the first chunk, so that it reaches
    the parent as that chunk's error (an initializer's own error only breaks the pool)."""
    global _worker
    try:
        schema = load_schema()
        bundle = load_bundle(Path(job.policy_dir), schema)
        catalog = load_catalog(Path(job.catalog_file))
        replayer = Replayer(bundle, catalog, schema, salt=job.salt, policy_texts=bundle.sources.values())
        if bundle.version != job.policy_version or replayer.catalog_version != job.catalog_version:
            _worker = _CHANGED
            return
        _worker = (replayer, Database(job.store_url))
    except Exception as exc:  # reported by the chunk, see above
        _worker = _CHANGED if isinstance(exc, TetherError) else f"{type(exc).__name__}: {exc}"


def _chunk(bounds: tuple[float, float | None]) -> ReplayReport:
    if not isinstance(_worker, tuple):
        raise _WorkerFailed(_worker or "worker not started")
    replayer, db = _worker
    report = ReplayReport(replayer.bundle.version, replayer.catalog_version)
    return replayer.replay(records(db, bounds[0], bounds[1]), report)


def _context() -> Any:
    """A fork server that has imported this module, so each worker is a fork of a clean,
    thread-free process with the replay code loaded: those imports are paid once, not per
    worker. (Each worker still imports the caller's ``__main__`` file, as multiprocessing
    does: keep heavy imports of a script that replays inside its ``main``.) ``spawn``
    where there is no fork server."""
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload([__name__])
    return ctx


def jobs_default() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def replay_window(
    replayer: Replayer,
    db: Database,
    since: float,
    until: float | None,
    *,
    total: int,
    jobs: int = 1,
    job: Job | None = None,
    progress: Callable[[int], None] | None = None,
    parallel_min: int = PARALLEL_MIN,
    chunk: int | None = None,
) -> ReplayReport:
    """Replay the window ``[since, until)``: here when it is short (fewer than
    ``parallel_min`` of its ``total`` decisions) or ``jobs`` is 1, else in ``jobs``
    worker processes described by ``job``, ``chunk`` decisions at a time (default: a
    quarter of a worker's share, within 5,000-50,000)."""
    report = ReplayReport(replayer.bundle.version, replayer.catalog_version)
    if jobs <= 1 or job is None or total < parallel_min:
        return replayer.replay(records(db, since, until), report, progress)
    size = chunk or max(_CHUNK_MIN, min(_CHUNK_MAX, total // (jobs * 4) + 1))
    cuts = boundaries(db, since, until, size)
    chunks: list[tuple[float, float | None]] = list(itertools.pairwise(cuts))
    chunks.append((cuts[-1], until))
    ctx = _context()
    workers = min(jobs, len(chunks))
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start, initargs=(job,)) as pool:
            # In window order: the merged report is the one a single pass writes.
            for part in pool.map(_chunk, chunks):
                report.absorb(part)
                if progress:
                    progress(part.decisions)
    except _WorkerFailed as exc:
        if str(exc) == _CHANGED:
            raise PolicyError(_CHANGED, code="policy_invalid") from exc
        raise Unavailable(f"replay worker failed: {exc}", code="unavailable") from exc
    except BrokenProcessPool as exc:
        raise Unavailable(
            "a replay worker process died; run again with --jobs 1", code="unavailable"
        ) from exc
    return report


class _WorkerFailed(Exception):
    """A worker could not replay its chunk (its message says why)."""

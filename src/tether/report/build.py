"""Build a report: gather facts (the edge), compute evidence, evaluate the mapping.

The result is one plain JSON-able dict — the document that is signed, rendered to HTML
and Markdown, and read back by ``tether report verify``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tether.audit.checkpoint import Checkpoint, read_checkpoint_file
from tether.audit.verify import snapshot
from tether.catalog import Catalog, load_catalog
from tether.config import Settings
from tether.errors import InvalidRequest, TetherError, Unavailable
from tether.report.evidence import Evidence, compute
from tether.report.facts import Facts, gather
from tether.report.mapping import ControlMapping, Result, counts, evaluate_all, load_mapping
from tether.report.mechanisms import MECHANISMS
from tether.store.db import Database

REPORT_KIND = "tether-compliance-report"
SCHEMA = 1


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def collect(
    settings: Settings,
    *,
    since: float,
    until: float | None = None,
    now: float | None = None,
    external: Sequence[Checkpoint] | None = None,
) -> Facts:
    """Read the deployment's facts for ``[since, until)``; refuse an empty store or window.

    ``external``: signed checkpoints kept outside the database; by default those of
    ``audit.checkpoint_file`` when it is set, so a rolled-back store is caught here too.
    """
    now = time.time() if now is None else now
    if external is None:
        external = []
        if settings.audit.checkpoint_file:
            p = Path(settings.audit.checkpoint_file)
            path = p if p.is_absolute() else settings.state_dir / p
            external = read_checkpoint_file(path) if path.exists() else []
    until = now if until is None else until
    if since >= until:
        raise InvalidRequest(
            f"the window is empty: `--since` ({iso(since)}) is not before `--until` ({iso(until)})",
            code="report_empty_window",
        )
    catalog: Catalog | None
    try:
        catalog = load_catalog(settings.catalog_path)
    except TetherError:
        catalog = None  # scope checks then compare grants exactly: stricter, never wider
    db = Database(settings.store_url)
    try:
        with snapshot(db) as conn:
            facts = gather(
                conn, settings, since=since, until=until, now=now, external=external, catalog=catalog
            )
    except SQLAlchemyError as exc:
        raise Unavailable(
            f"cannot read the store: {type(exc).__name__}; is it a tether store (`tether store upgrade`)?",
            code="report_store_unreadable",
        ) from None
    finally:
        db.dispose()
    if facts.total_events == 0:
        raise InvalidRequest(
            "the store has no audit events yet: run the broker (or `tether demo --keep`) first",
            code="report_no_events",
        )
    if not facts.events:
        raise InvalidRequest(
            f"no audit events between {iso(since)} and {iso(until)}; widen `--since`",
            code="report_empty_window",
        )
    return facts


def _control_dict(r: Result, ev: Evidence) -> dict[str, Any]:
    c = r.control
    out: dict[str, Any] = {
        "id": c.id,
        "framework": c.framework,
        "title": c.title,
        "status": r.status,
        "why": r.why,
    }
    if c.out_of_scope:
        out["reason"] = c.out_of_scope
        return out
    out["mechanisms"] = [
        {"name": m, "title": MECHANISMS[m].title, "doc": MECHANISMS[m].doc} for m in c.mechanisms
    ]
    out["evidence"] = list(c.evidence)
    out["rules"] = {"met": [x.text for x in c.met], "partly_met": [x.text for x in c.partly_met]}
    if c.ceiling_reason:
        out["ceiling_reason"] = c.ceiling_reason
    return out


def build_report(
    settings: Settings,
    facts: Facts,
    mapping: ControlMapping | None = None,
    *,
    generated_at: float | None = None,
) -> dict[str, Any]:
    mapping = mapping or load_mapping()
    ev = compute(facts)
    results = evaluate_all(mapping, ev)
    return {
        "report": REPORT_KIND,
        "schema": SCHEMA,
        "generated_at": iso(time.time() if generated_at is None else generated_at),
        "window": {
            "since": facts.since,
            "until": facts.until,
            "since_iso": iso(facts.since),
            "until_iso": iso(facts.until),
        },
        "deployment": {
            "trust_domain": settings.trust_domain,
            "environment": settings.environment,
            "node_id": settings.node_id,
            "store": settings.store_url.split(":", 1)[0].split("+", 1)[0],
            "policy_version": ev.value("policy.in_force"),
        },
        "mapping": {"version": mapping.version, "source": mapping.source},
        "summary": dict(counts(results)),
        "frameworks": [{"id": f.id, "title": f.title, "note": f.note} for f in mapping.frameworks],
        "controls": [_control_dict(r, ev) for r in results],
        "evidence": {k: m.to_dict() for k, m in ev.metrics.items()},
        "charts": {"distributions": ev.distributions, "decisions": ev.series},
    }


def one_control(report: dict[str, Any], control_id: str) -> dict[str, Any]:
    """The control ``control_id`` (any case) with its evidence rows inlined."""
    want = control_id.strip().casefold()
    for c in report["controls"]:
        if c["id"].casefold() == want:
            return {**c, "evidence": [report["evidence"][k] for k in c.get("evidence", [])]}
    known = ", ".join(c["id"] for c in report["controls"])
    raise InvalidRequest(f"unknown control `{control_id}`; one of {known}", code="unknown_control")


__all__ = ["REPORT_KIND", "build_report", "collect", "iso", "one_control"]

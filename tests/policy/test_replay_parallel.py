"""Replay in worker processes: the same report as one process, chunk by chunk in window order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tether.audit.masking import salt_from_master_key
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.errors import PolicyError
from tether.identity.keys import load_master_key
from tether.model import Grant, Workload
from tether.policy import load_bundle, load_schema
from tether.policy.replay import MAX_EXAMPLES, MAX_EXAMPLES_REPORT, Replayer, ReplayReport
from tether.policy.replay_window import Job, boundaries, count, records, replay_window
from tether.runtime import Runtime
from tether.store import tables as t

DOMAIN = "support.example"
SCOPE = (
    Grant("read", "tickets.queue"),
    Grant("tool:call", "tickets.comment"),
    Grant("tool:call", "slack-external.post"),
)
#: Flips every comment whose token is tok-1 or tok-2 and every post of billing.refund tasks.
CANDIDATE = """
@id("no-token-comments")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"tickets.comment")
when { context.call.hasTag("token") && ["tok-1", "tok-2"].contains(context.call.getTag("token")) };

@id("triage-may-post")
permit (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"slack-external.post")
when { context.task.intent == "support.triage" };
"""


def _record(rt: Runtime, n: int) -> None:
    """``n`` real decisions of four agents: reads, comments with tokens, posts."""
    tokens = [
        rt.broker.open_task(
            Workload(f"spiffe://{DOMAIN}/agent-{i}", DOMAIN, "jwt-svid"),
            OpenTaskRequest("support.triage", "replay", SCOPE, 600),
        ).token
        for i in range(4)
    ]
    for i in range(n):
        tok = tokens[i % 4]
        if i % 3 == 0:
            req = AuthorizeRequest("read", "tickets.queue", {"ticket": f"T-{i}"})
        elif i % 3 == 1:
            req = AuthorizeRequest("tool:call", "tickets.comment", {"token": f"tok-{i % 5}", "n": i})
        else:
            req = AuthorizeRequest("tool:call", "slack-external.post", {})
        rt.broker.authorize(tok, req)


def _setup(rt: Runtime, tmp_path: Path) -> tuple[Any, Job]:
    cand = tmp_path / "candidate"
    shutil.copytree(rt.settings.policy_path, cand)
    (cand / "90-candidate.cedar").write_text(CANDIDATE)
    schema = load_schema()
    bundle = load_bundle(cand, schema)
    salt = salt_from_master_key(load_master_key(rt.settings.state_dir))

    def fresh() -> Replayer:
        return Replayer(bundle, rt.catalog, schema, salt=salt, policy_texts=bundle.sources.values())

    job = Job(
        str(cand),
        bundle.version,
        str(rt.settings.catalog_path),
        fresh().catalog_version,
        rt.settings.store_url,
        salt,
    )
    return fresh, job


def _store_marks(rt: Runtime) -> tuple[int, list[tuple[str, int]]]:
    with rt.db.read() as conn:
        n = conn.execute(select(func.count()).select_from(t.audit_events)).scalar_one()
        heads = conn.execute(select(t.audit_chains.c.chain, t.audit_chains.c.head_seq)).all()
    return int(n), sorted((str(c), int(s)) for c, s in heads)


def _plain(report: ReplayReport) -> dict[str, Any]:
    d = report.to_dict()
    del d["evaluated"]  # each worker has its own cache
    return d


def test_parallel_replay_reports_exactly_the_flips_and_examples_of_one_process(runtime, tmp_path):
    _record(runtime, 90)
    fresh, job = _setup(runtime, tmp_path)
    total = count(runtime.db, 0.0, None)
    before = _store_marks(runtime)
    one = replay_window(fresh(), runtime.db, 0.0, None, total=total, jobs=1)
    many = replay_window(
        fresh(), runtime.db, 0.0, None, total=total, jobs=2, job=job, parallel_min=0, chunk=7
    )
    assert _plain(many) == _plain(one)
    assert _store_marks(runtime) == before  # the workers only read
    # Enough flips that examples are cut at every level, across chunk boundaries.
    assert one.replayed == 90 and one.flips > MAX_EXAMPLES_REPORT
    assert len(one.examples) == MAX_EXAMPLES_REPORT
    assert all(len(g.examples) == MAX_EXAMPLES for g in one.by_policy.values())


def test_chunks_cover_the_window_once(runtime):
    _record(runtime, 30)
    total = count(runtime.db, 0.0, None)
    cuts = boundaries(runtime.db, 0.0, None, 7)
    assert cuts[0] == 0.0 and cuts == sorted(set(cuts))
    ends: list[float | None] = [*cuts[1:], None]
    sizes = [sum(1 for _ in records(runtime.db, a, b)) for a, b in zip(cuts, ends, strict=True)]
    assert sum(sizes) == total == 30 and sizes == [7, 7, 7, 7, 2]


def test_a_candidate_changed_under_a_parallel_replay_is_refused(runtime, tmp_path):
    """A worker loads the directory again: a version that is not the checked one stops it."""
    _record(runtime, 6)
    fresh, job = _setup(runtime, tmp_path)
    (Path(job.policy_dir) / "91-later.cedar").write_text(
        '@id("later")\nforbid (principal, action, resource);'
    )
    with pytest.raises(PolicyError, match="changed during the replay"):
        replay_window(fresh(), runtime.db, 0.0, None, total=6, jobs=2, job=job, parallel_min=0, chunk=3)


def test_jobs_option_gives_the_same_report(runtime, tmp_path):
    """`--jobs` only changes where the work runs (a short window stays in one process)."""
    from click.testing import CliRunner

    from tether.cli import main

    _record(runtime, 12)
    _, job = _setup(runtime, tmp_path)

    def run(*extra: str) -> dict[str, Any]:
        res = CliRunner().invoke(
            main,
            [
                "policy",
                "replay",
                job.policy_dir,
                *extra,
                "--state-dir",
                str(runtime.settings.state_dir),
                "--store",
                runtime.settings.store_url,
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
        d: dict[str, Any] = json.loads(res.output)
        del d["seconds"], d["rate_per_second"], d["window"]  # the window: 7 days back from now
        return d

    one = run("--jobs", "1")
    assert one["flips"] > 0
    assert run("--jobs", "2") == one == run()

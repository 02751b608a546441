"""Metrics of two replica processes on one PostgreSQL store: the revocation lag is observed
by the replica that revoked the lease — a survivor, when the closing replica is killed
mid-close — and each replica reports its own revocation-feed lag, labelled with its node id."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from _credhelp import DATASETS, add_analytics, tether_roles, wait_until

from _replicas import ReplicaProc, replicas
from tether.testing import BROKER_DOMAIN

pytestmark = [pytest.mark.postgresql, pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)]

AUDIENCE = f"spiffe://{BROKER_DOMAIN}/tether"
READ_Q = {"action": "read", "resource": "tickets.queue"}
READ_ORDERS = {"action": "read", "resource": "analytics.orders"}


def _value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name{labels…}`` of a Prometheus text page (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
        if m and m.group(1) == name:
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
    return total


def _scrape(rep: ReplicaProc) -> str:
    r = httpx.get(rep.url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    return r.text


@pytest.fixture
def two(tmp_path, store_url, domain, admin_url):
    extra = f'\n[credentials.postgres]\nanalytics = "{admin_url}"\n'
    with replicas(
        tmp_path,
        store_url,
        domain,
        2,
        config_extra=extra,
        prepare=lambda s: add_analytics(s, DATASETS),
        start=False,
    ) as reps:
        yield reps


def _open(domain: Any, rep: ReplicaProc, scope: list[dict[str, str]]) -> dict[str, Any]:
    svid = domain.svid(domain.spiffe_id("analyst"), AUDIENCE)
    body = {"intent": "support.triage", "description": "metrics", "ttl_seconds": 600, "scope": scope}
    r = httpx.post(rep.url + "/v1/tasks", json=body, headers={"Authorization": f"Bearer {svid}"}, timeout=30)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _authorize(rep: ReplicaProc, task: dict[str, Any], req: dict[str, str]) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {task['task_token']}"}
    return dict(httpx.post(rep.url + "/v1/authorize", json=req, headers=auth, timeout=30).json())


def _close(rep: ReplicaProc, task: dict[str, Any]) -> httpx.Response:
    auth = {"Authorization": f"Bearer {task['task_token']}"}
    return httpx.post(rep.url + f"/v1/tasks/{task['task_id']}/close", headers=auth, timeout=30)


def _child(
    domain: Any, rep: ReplicaProc, parent: dict[str, Any], scope: list[dict[str, str]]
) -> dict[str, Any]:
    """A task delegated from ``parent`` (to the same agent), opened on ``rep``."""
    auth = {"Authorization": f"Bearer {parent['task_token']}"}
    body = {"child": domain.spiffe_id("analyst"), "scope": scope, "ttl_seconds": 300}
    r = httpx.post(
        rep.url + f"/v1/tasks/{parent['task_id']}/delegations", json=body, headers=auth, timeout=30
    )
    assert r.status_code == 201, r.text
    svid = domain.svid(domain.spiffe_id("analyst"), AUDIENCE)
    r = httpx.post(
        rep.url + "/v1/tasks",
        json={"delegation": r.json()["delegation"]},
        headers={"Authorization": f"Bearer {svid}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


@contextlib.contextmanager
def _children_output_on_failure(reps: Sequence[ReplicaProc]) -> Iterator[None]:
    """A failing assertion carries what each replica process wrote (stdout and stderr)."""
    try:
        yield
    except AssertionError as exc:
        tails = "\n".join(
            f"--- {r.node_id} (exit {r.proc.poll() if r.proc else None}) ---\n{r.log.read_text()[-6000:]}"
            for r in reps
            if r.log.exists()
        )
        raise AssertionError(f"{exc}\n{tails}") from exc


def _revocations(store_url: str, lease_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The `credential.revoked` events of ``lease_ids``, as the store holds them (any chain)."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT chain, ts, lease_id, task_id, payload FROM audit_events "
                    "WHERE type = 'credential.revoked' AND lease_id = ANY(:ids)"
                ),
                {"ids": list(lease_ids)},
            ).all()
            ended = dict(
                conn.execute(
                    sa.text("SELECT id, closed_at FROM tasks WHERE id = ANY(:ids)"),
                    {"ids": sorted({str(r.task_id) for r in rows})},
                ).all()
            )
    finally:
        engine.dispose()
    return [
        {
            "chain": r.chain,
            "ts": r.ts,
            "lease_id": r.lease_id,
            "closed_at": ended.get(r.task_id),
            **json.loads(r.payload),
        }
        for r in rows
    ]


def test_a_survivor_revokes_the_tree_and_records_the_lag_when_the_closing_replica_dies_mid_close(
    two, domain, pg_server, store_url
):
    """Replica 0 closes a task tree (a root and a delegated child, one PostgreSQL role each)
    and is killed (SIGKILL) right after the close commits, before it cuts or wakes its
    reaper. Replica 1 drops every role of the tree, records each `credential.revoked` with
    `task_ended_at` = the task's stored `closed_at`, and its `/metrics` counts the lag of
    each — within 20 s, well under the 60 s a claim left by replica 0 would have held a
    lease."""
    two[0].env["TETHER_FAILPOINT"] = "task.ended_before_cut"
    with _children_output_on_failure(two):
        for r in two:
            r.start()
        for r in two:
            r.wait_ready()
        root = _open(domain, two[0], [READ_ORDERS])
        child = _child(domain, two[0], root, [READ_ORDERS])
        leases = []
        for task in (root, child):
            d = _authorize(two[0], task, READ_ORDERS)
            assert d["decision"] == "allow" and d.get("credential"), d
            leases.append(d["credential"]["lease_id"])
        assert len(tether_roles(pg_server)) == 2
        name = "tether_revocation_lag_seconds_count"
        before = _scrape(two[1])
        with pytest.raises(httpx.TransportError):
            _close(two[0], root)  # the process kills itself after the close commits
        assert two[0].proc is not None and two[0].proc.wait(10) == -9
        died = time.time()
        wait_until(lambda: not tether_roles(pg_server), timeout=20, what="replica 1 to drop every role")
        page = wait_until(
            lambda: (lambda t: t if _value(t, name) - _value(before, name) >= 2 else None)(_scrape(two[1])),
            timeout=20,
            what="replica 1 to record both revocations",
        )
        assert _value(page, name) - _value(before, name) == 2
        events = _revocations(store_url, leases)
        assert sorted(e["lease_id"] for e in events) == sorted(leases), events
        for e in events:
            assert e["chain"] == "rep-1" and e["reason"] == "task_closed", e
            assert e["task_ended_at"] == pytest.approx(e["closed_at"]), e
        lags = sorted(e["ts"] - e["task_ended_at"] for e in events)
        sums = [_value(t, "tether_revocation_lag_seconds_sum") for t in (page, before)]
        assert sums[0] - sums[1] == pytest.approx(sum(lags), abs=1e-3)
        assert 0 < lags[-1] <= time.time() - died + 1.0  # from the stored end, not replica 1's own
        print("survivor revocation lag: " + " ".join(f"{x * 1000:.1f}ms" for x in lags))
        assert _value(page, "tether_revocations_total", reason="task_closed") >= 2


def test_a_revocation_left_claimed_by_a_killed_replica_is_finished_at_once_by_the_next_replica(
    two, domain, pg_server, store_url
):
    """Replica 0, alone, closes a task; its reaper claims the lease, drops the role and the
    process is killed before it records that (the lease stays `revoking` under its claim
    for the 60 s visibility timeout). Replica 1, started afterwards, sees the claimant's
    process is gone and records the revocation (with `task_ended_at`) at its first passes,
    within 15 s of being ready."""
    two[0].env["TETHER_FAILPOINT"] = "reaper.after_revoke"
    with _children_output_on_failure(two):
        two[0].start()
        two[0].wait_ready()
        task = _open(domain, two[0], [READ_ORDERS])
        d = _authorize(two[0], task, READ_ORDERS)
        assert d["decision"] == "allow" and d.get("credential"), d
        with contextlib.suppress(httpx.TransportError):  # the reaper may kill it before the reply
            assert _close(two[0], task).status_code == 200
        assert two[0].proc is not None and two[0].proc.wait(30) == -9
        assert not tether_roles(pg_server)  # dropped by replica 0 …
        assert _revocations(store_url, [d["credential"]["lease_id"]]) == []  # … and never recorded
        two[1].start()
        two[1].wait_ready()
        ready = time.monotonic()
        events = wait_until(
            lambda: _revocations(store_url, [d["credential"]["lease_id"]]),
            timeout=15,
            what="replica 1 to record the revocation",
        )
        print(f"recorded {time.monotonic() - ready:.2f} s after replica 1 was ready")
        assert [(e["chain"], e["reason"]) for e in events] == [("rep-1", "task_closed")]
        assert events[0]["task_ended_at"] == pytest.approx(events[0]["closed_at"])
        assert "took over 1 revocation(s) claimed by a replica that is gone (rep-0:" in two[1].log.read_text()


def test_each_replica_reports_its_own_feed_lag_after_a_close_on_another(two, domain):
    """A close on replica 0 reaches replica 1's feed follower (LISTEN/NOTIFY): replica 1's
    `tether_revocation_feed_lag_seconds{replica="rep-1"}` counts the entry within a second,
    its poll age stays fresh, and replica 1 reports no other replica's series."""
    for r in two:
        r.start()
    for r in two:
        r.wait_ready()
    name = "tether_revocation_feed_lag_seconds_count"
    before = wait_until(
        lambda: (lambda t: t if f'{name}{{replica="rep-1"}}' in t else None)(_scrape(two[1])),
        what="replica 1's follower",
    )
    assert 'tether_revocation_feed_newest_entry_age_seconds{replica="rep-1"}' not in before  # none applied
    assert _value(before, "tether_revocation_feed_poll_age_seconds", replica="rep-1") < 5
    task = _open(domain, two[0], [READ_Q])
    assert _close(two[0], task).status_code == 200
    page = wait_until(
        lambda: (lambda t: t if _value(t, name) > _value(before, name) else None)(_scrape(two[1])),
        what="the close to reach replica 1's follower",
    )
    assert _value(page, name, replica="rep-1") - _value(before, name, replica="rep-1") == 1
    lag = _value(page, "tether_revocation_feed_lag_seconds_sum", replica="rep-1") - _value(
        before, "tether_revocation_feed_lag_seconds_sum", replica="rep-1"
    )
    print(f"feed lag to the other replica: {lag * 1000:.1f} ms")
    assert 0 <= lag < 1.0
    assert _value(page, "tether_revocation_feed_poll_age_seconds", replica="rep-1") < 5
    assert _value(page, "tether_revocation_feed_newest_entry_age_seconds", replica="rep-1") < 5
    assert 'replica="rep-0"' not in page  # each replica's scrape speaks for itself

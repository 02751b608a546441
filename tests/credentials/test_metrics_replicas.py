"""Metrics of two replica processes on one PostgreSQL store: each replica reports its own
revocation-feed lag, labelled with its node id. (The revocation lag observed by a replica
that finishes another's close is pinned in-process by tests/core/test_metrics.py; across
processes, when the closing replica dies mid-close, it is not yet reliably attributed.)"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from _credhelp import DATASETS, add_analytics, wait_until

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

"""jwt credentials, cascading revocation, the revocation feed, RFC 7662 and RFC 7009."""

from __future__ import annotations

import threading

import pytest

from tether.credentials import leases as ls
from tether.identity.jwt import load_jwk, verify_jwt
from tether.testing import capture_events


def _task(agent, resources=("tickets.queue",), actions=("read",), **kw):
    scope = [{"action": a, "resource": r} for r in resources for a in actions]
    r = agent.open(scope, **kw)
    assert r.status_code == 201, r.text
    return r.json()


def _cred(agent, token, resource="tickets.queue", action="read"):
    body = agent.authorize(token, action, resource).json()
    assert body["decision"] == "allow", body
    return body["credential"]


def _svid_header(agent):
    return {"Authorization": f"Bearer {agent.svid()}"}


def _introspect(agent, token):
    return agent.client.post("/v1/introspect", data={"token": token}, headers=_svid_header(agent))


def test_allow_returns_jwt_credential_in_the_contract_shape(agent, client, runtime):
    """An allowed read on a jwt service returns {kind, token, expires_at, audience} + lease id."""
    t = _task(agent)
    cred = _cred(agent, t["task_token"])
    assert cred["kind"] == "jwt" and cred["audience"] == "tickets" and cred["lease_id"].startswith("lse_")
    jwks = client.get("/.well-known/jwks.json").json()
    keys = {k["kid"]: load_jwk(k) for k in jwks["keys"]}
    claims = verify_jwt(
        cred["token"],
        key_for=lambda h, c: keys.get(h["kid"]),
        algorithms=("ES256",),
        audience="tickets",
        issuer=runtime.settings.broker_issuer,
        typ=("at+jwt",),
        leeway=0,
    )
    assert claims["jti"] == cred["lease_id"] and claims["txn"] == t["task_id"]
    assert claims["scope"] == "read@tickets.queue" and claims["exp"] <= t["expires_at"]


def test_lease_never_outlives_its_task(agent, runtime):
    """A lease's expiry is capped by its task's expiry."""
    t = _task(agent, ttl=20)
    cred = _cred(agent, t["task_token"])
    with runtime.db.read() as conn:
        lease = ls.get_lease(conn, cred["lease_id"])
    assert lease is not None and lease.expires_at <= t["expires_at"] and cred["expires_at"] <= t["expires_at"]


def test_mint_event_is_in_the_authorize_transaction_without_the_token(agent):
    """credential.minted carries lease, task and connector, never the token."""
    t = _task(agent)
    with capture_events() as events:
        cred = _cred(agent, t["task_token"])
    minted = [e for e in events if e.type == "credential.minted"]
    decision = [e for e in events if e.type == "decision"]
    assert minted[0].lease_id == cred["lease_id"] == decision[0].lease_id
    assert minted[0].seq + 1 == decision[0].seq  # same unit, one chain segment
    assert cred["token"] not in str([e.to_dict() for e in events])


def test_the_lease_is_recorded_active_with_its_key_before_the_token_is_returned(agent, runtime):
    """When the agent holds the token, its lease row is committed, active, naming the key
    that signed it (SQLite writes it once, after the mint; PostgreSQL pending first)."""
    t = _task(agent)
    cred = _cred(agent, t["task_token"])
    with runtime.db.read() as conn:
        lease = ls.get_lease(conn, cred["lease_id"])
    assert lease is not None
    assert (lease.state, lease.revocation) == (ls.LeaseState.ACTIVE, ls.Revocation.NONE)
    assert lease.material == {"kid": runtime.keys.signing_key().kid}
    assert (lease.connector, lease.audience, lease.scope) == ("jwt", "tickets", "read@tickets.queue")


def test_a_failed_mint_denies_and_leaves_no_live_lease(agent, runtime, monkeypatch):
    """A connector that fails denies the action; no lease it could have made is left live."""
    t = _task(agent)
    connector = runtime.credentials.service.connectors["jwt"]

    def broken(req):
        raise RuntimeError("signer down")

    monkeypatch.setattr(connector, "mint", broken)
    body = agent.authorize(t["task_token"], "read", "tickets.queue").json()
    assert (body["decision"], body["code"]) == ("deny", "connector_failed")
    with runtime.db.read() as conn:
        live = ls.live_leases_of_tasks(conn, [t["task_id"]])
    assert live == []


def test_close_revokes_leases_of_the_whole_subtree(agent, make_agent, client, runtime):
    """Closing a parent revokes its leases and its delegated child's leases."""
    parent = _task(agent)
    child_agent = make_agent("helper")
    d = client.post(
        f"/v1/tasks/{parent['task_id']}/delegations",
        json={
            "child": child_agent.spiffe_id,
            "ttl_seconds": 60,
            "scope": [{"action": "read", "resource": "tickets.queue"}],
        },
        headers={"Authorization": f"Bearer {parent['task_token']}"},
    )
    child = child_agent.open(None, delegation=d.json()["delegation"]).json()
    leases = [
        _cred(agent, parent["task_token"])["lease_id"],
        _cred(child_agent, child["task_token"])["lease_id"],
    ]
    runtime.broker.close_task(parent["task_id"], by="test")
    with runtime.db.read() as conn:
        states = {ls.get_lease(conn, x).state for x in leases}
    assert states == {ls.LeaseState.REVOKED}
    events, _ = runtime.credentials.feed.since(0)
    assert {e.task_id for e in events if e.kind == "task"} == {parent["task_id"], child["task_id"]}
    assert {e.lease_id for e in events if e.kind == "lease"} == set(leases)


def test_kill_switch_revokes_every_lease(agent, make_agent, runtime):
    """`tether revoke --all` revokes the leases of every active task."""
    other = make_agent("other")
    ids = [_cred(a, _task(a)["task_token"])["lease_id"] for a in (agent, other)]
    runtime.broker.revoke(everything=True, by="test")
    with runtime.db.read() as conn:
        assert all(ls.get_lease(conn, x).state is ls.LeaseState.REVOKED for x in ids)


def test_revoke_by_agent_revokes_its_leases_only(agent, make_agent, runtime):
    """`tether revoke --agent` revokes that agent's leases and leaves others'."""
    other = make_agent("other")
    mine = _cred(agent, _task(agent)["task_token"])["lease_id"]
    theirs = _cred(other, _task(other)["task_token"])["lease_id"]
    runtime.broker.revoke(agent=agent.spiffe_id, by="test")
    with runtime.db.read() as conn:
        assert ls.get_lease(conn, mine).state is ls.LeaseState.REVOKED
        assert ls.get_lease(conn, theirs).state is ls.LeaseState.ACTIVE


def test_explicit_credential_request_is_decided_by_policy(agent, client):
    """POST /v1/credentials issues for `credential:issue` in scope and refuses otherwise."""
    r = agent.open(
        [
            {"action": "read", "resource": "tickets.queue"},
            {"action": "credential:issue", "resource": "tickets"},
        ]
    )
    h = {"Authorization": f"Bearer {r.json()['task_token']}"}
    r = client.post("/v1/credentials", json={"resource": "tickets"}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "jwt" and r.json()["audience"] == "tickets"
    r = client.post("/v1/credentials", json={"resource": "crm"}, headers=h)
    assert r.status_code == 403 and r.json()["code"] == "out_of_scope"


def test_explicit_credential_for_resource_without_connector_is_400(agent, client, runtime):
    """Asking a credential for a resource with no connector is a 400, not a 5xx."""
    from dataclasses import replace

    res = runtime.catalog.resources["tickets"]
    runtime.catalog.resources["tickets"] = replace(res, connector=None)  # type: ignore[index]
    try:
        t = _task(agent)
        r = client.post(
            "/v1/credentials",
            json={"resource": "tickets"},
            headers={"Authorization": f"Bearer {t['task_token']}"},
        )
        assert r.status_code == 400 and r.json()["code"] == "no_connector"
    finally:
        runtime.catalog.resources["tickets"] = res  # type: ignore[index]


def test_introspection_active_then_exactly_inactive_after_close(agent, runtime):
    """RFC 7662: a live credential is active; once its task closes, only {"active": false}."""
    t = _task(agent)
    cred = _cred(agent, t["task_token"])
    r = _introspect(agent, cred["token"])
    assert r.status_code == 200 and r.json()["active"] is True and r.json()["jti"] == cred["lease_id"]
    assert _introspect(agent, t["task_token"]).json()["active"] is True
    runtime.broker.close_task(t["task_id"], by="test")
    assert _introspect(agent, cred["token"]).json() == {"active": False}
    assert _introspect(agent, t["task_token"]).json() == {"active": False}


def test_introspection_of_garbage_is_inactive(agent):
    """A forged or malformed token introspects as {"active": false}, not an error."""
    assert _introspect(agent, "not.a.jwt").json() == {"active": False}


def test_introspection_requires_an_authenticated_caller(agent, client):
    """Introspection refuses callers without a valid JWT-SVID."""
    t = _task(agent)
    r = client.post("/v1/introspect", data={"token": t["task_token"]})
    assert r.status_code == 401
    r = client.post(
        "/v1/introspect",
        data={"token": t["task_token"]},
        headers={"Authorization": f"Bearer {t['task_token']}"},
    )
    assert r.status_code == 401


def test_revoke_token_unknown_is_200(agent, client):
    """RFC 7009: revoking an unknown token answers 200."""
    r = client.post("/v1/revoke-token", data={"token": "garbage"}, headers=_svid_header(agent))
    assert r.status_code == 200


def test_revoke_token_kills_the_credential_and_feeds_it(agent, client, runtime):
    """RFC 7009 on a jwt credential revokes its lease and puts its jti on the feed."""
    t = _task(agent)
    cred = _cred(agent, t["task_token"])
    r = client.post(
        "/v1/revoke-token",
        data={"token": cred["token"]},
        headers={"Authorization": f"Bearer {t['task_token']}"},
    )
    assert r.status_code == 200
    assert _introspect(agent, cred["token"]).json() == {"active": False}
    events, _ = runtime.credentials.feed.since(0)
    assert [e.lease_id for e in events] == [cred["lease_id"]]


def test_revoke_token_on_task_token_revokes_the_task(agent, client, runtime):
    """RFC 7009 on a task token revokes the task (and so its leases)."""
    t = _task(agent)
    cred = _cred(agent, t["task_token"])
    client.post("/v1/revoke-token", data={"token": t["task_token"]}, headers=_svid_header(agent))
    assert runtime.broker.get_task(t["task_id"])[0].state.value == "revoked"
    with runtime.db.read() as conn:
        assert ls.get_lease(conn, cred["lease_id"]).state is ls.LeaseState.REVOKED


def test_feed_polling_resumes_from_cursor(agent, client, runtime):
    """GET /v1/revocations returns entries after `since` and a cursor to resume from."""
    a, b = _task(agent), _task(agent)
    runtime.broker.close_task(a["task_id"], by="test")
    r = client.get("/v1/revocations", params={"since": 0}, headers=_svid_header(agent)).json()
    cursor = r["cursor"]
    assert [e["task_id"] for e in r["events"]] == [a["task_id"]]
    runtime.broker.close_task(b["task_id"], by="test")
    r = client.get("/v1/revocations", params={"since": cursor}, headers=_svid_header(agent)).json()
    assert [e["task_id"] for e in r["events"]] == [b["task_id"]] and r["cursor"] > cursor


def test_feed_requires_authentication(client):
    """The feed is for authenticated workloads only."""
    assert client.get("/v1/revocations").status_code == 401
    assert client.get("/v1/revocations/stream").status_code == 401


def test_feed_rejects_bad_cursor_with_400(agent, client):
    """A non-numeric cursor is a 400 `invalid_field`."""
    r = client.get("/v1/revocations", params={"since": "x'"}, headers=_svid_header(agent))
    assert r.status_code == 400 and r.json()["code"] == "invalid_field"


def test_sse_stream_sends_ids_and_resumes_with_last_event_id(agent, client, runtime):
    """The SSE stream carries `id:` cursors; Last-Event-ID resumes after them."""
    a, b = _task(agent), _task(agent)
    runtime.broker.close_task(a["task_id"], by="test")
    runtime.broker.close_task(b["task_id"], by="test")
    with client.stream(
        "GET", "/v1/revocations/stream", params={"timeout": 1}, headers=_svid_header(agent)
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert len(ids) == 2 and "event: revocation" in text
    with client.stream(
        "GET",
        "/v1/revocations/stream",
        params={"timeout": 1},
        headers={**_svid_header(agent), "Last-Event-ID": str(ids[0])},
    ) as r:
        text = "".join(r.iter_text())
    assert b["task_id"] in text and a["task_id"] not in text


def test_race_issue_and_revoke_leaves_nothing_usable(agent, runtime):
    """Threads issuing while another revokes: after revoke commits, no lease of the task lives."""
    t = _task(agent)
    introspector = runtime.credentials.introspector
    issued: list[str] = []
    start = threading.Barrier(5)

    def issue() -> None:
        start.wait()
        for _ in range(8):
            try:
                body = agent.authorize(t["task_token"], "read", "tickets.queue").json()
            except Exception:  # the TestClient is shared; a failure is just no credential
                continue
            if body.get("credential"):
                issued.append(body["credential"]["token"])

    threads = [threading.Thread(target=issue) for _ in range(4)]
    for th in threads:
        th.start()
    start.wait()
    runtime.broker.revoke(task_id=t["task_id"], by="test")
    for th in threads:
        th.join(60)
    with runtime.db.read() as conn:
        live = [x for x in ls.list_leases(conn, task_id=t["task_id"]) if x.state in ls.LIVE]
    assert live == []
    assert all(introspector.introspect(tok) == {"active": False} for tok in issued)


# LISTEN/NOTIFY exists on PostgreSQL only: these tests run on that store alone.
_ON_POSTGRESQL = pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)


@_ON_POSTGRESQL
def test_closing_a_task_notifies_other_replicas(agent, runtime, store_url):
    """On PostgreSQL the feed append sends NOTIFY, delivered at commit to every replica."""
    import psycopg

    from tether.credentials.connectors.postgres import libpq_dsn as _libpq
    from tether.credentials.revocation import NOTIFY_CHANNEL

    t = _task(agent)
    dsn = _libpq(runtime.db.engine.url.render_as_string(hide_password=False))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        runtime.broker.close_task(t["task_id"], by="test")
        got = list(conn.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in got] == [NOTIFY_CHANNEL]


@_ON_POSTGRESQL
def test_feed_listener_wakes_local_followers_on_notify(runtime, store_url):
    """A replica's LISTEN thread wakes its followers when another replica notifies."""
    import psycopg
    from _credhelp import wait_until

    from tether.credentials.connectors.postgres import libpq_dsn as _libpq
    from tether.credentials.revocation import NOTIFY_CHANNEL, Feed

    feed = Feed(runtime.db)
    stop = threading.Event()
    thread = feed.listen(stop)
    try:
        wait_until(lambda: feed.generation > 0, what="listener connected")
        before = feed.generation
        dsn = _libpq(runtime.db.engine.url.render_as_string(hide_password=False))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
        wait_until(lambda: feed.generation > before, what="woken by NOTIFY")
    finally:
        stop.set()
        thread.join(5)

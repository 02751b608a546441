"""Verified task tokens are remembered; nothing that would fail a full verify passes a hit."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from tether import tokens as tokens_module
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.errors import Unauthenticated
from tether.model import Grant, Workload
from tether.store import tables as t


@pytest.fixture
def opened(runtime: Any, domain: Any) -> Any:
    wl = Workload(domain.spiffe_id("cache"), domain.name, "jwt-svid")
    return runtime.broker.open_task(
        wl, OpenTaskRequest("support.triage", "cache", (Grant("read", "tickets.queue"),), 600)
    )


@pytest.fixture
def full_verifies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = tokens_module.verify_jwt

    def counting(token: str, **kw: Any) -> Any:
        calls.append(token)
        return real(token, **kw)

    monkeypatch.setattr(tokens_module, "verify_jwt", counting)
    return calls


def test_a_repeated_token_is_not_parsed_and_verified_again(runtime, opened, full_verifies):
    tokens = runtime.broker.tokens
    now = runtime.broker.clock()
    first = tokens.verify(opened.token, now=now)
    again = tokens.verify(opened.token, now=now)
    assert again == first and full_verifies == [opened.token]


def test_a_remembered_token_still_expires(runtime, opened, full_verifies):
    tokens = runtime.broker.tokens
    claims = tokens.verify(opened.token, now=runtime.broker.clock())
    with pytest.raises(Unauthenticated) as exc:
        tokens.verify(opened.token, now=claims.raw["exp"] + 3600)
    assert exc.value.code == "token_expired"
    assert len(full_verifies) == 1  # refused by the hit's own claim checks


def test_a_retired_signing_key_stops_its_remembered_tokens(runtime, opened, full_verifies):
    tokens = runtime.broker.tokens
    claims = tokens.verify(opened.token, now=runtime.broker.clock())
    kid = runtime.keys.signing_key().kid
    with runtime.db.begin() as conn:  # the key ends (as a replica's rotation would end it)
        conn.execute(update(t.signing_keys).where(t.signing_keys.c.kid == kid).values(expires_at=1.0))
    runtime.keys.refresh()
    with pytest.raises(Unauthenticated) as exc:
        tokens.verify(opened.token, now=runtime.broker.clock())
    assert exc.value.code == "unknown_kid"
    assert full_verifies == [opened.token, opened.token]  # the hit was not trusted
    assert claims.task_id == opened.task.id


def test_a_forged_signature_is_never_remembered(runtime, opened, full_verifies):
    tokens = runtime.broker.tokens
    head, body, sig = opened.token.split(".")
    forged = f"{head}.{body}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}"
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            tokens.verify(forged, now=runtime.broker.clock())
    assert full_verifies == [forged, forged]


def test_a_token_remembered_for_one_audience_does_not_pass_for_another(runtime, opened):
    tokens = runtime.broker.tokens
    tokens.verify(opened.token, now=runtime.broker.clock())
    with pytest.raises(Unauthenticated) as exc:
        tokens.verify(opened.token, now=runtime.broker.clock(), audience="https://tickets.example/mcp")
    assert exc.value.code == "bad_audience"


def test_the_memory_is_bounded(runtime, domain, monkeypatch):
    monkeypatch.setattr(tokens_module, "VERIFIED_KEPT", 2)
    tokens = runtime.broker.tokens
    wl = Workload(domain.spiffe_id("cache"), domain.name, "jwt-svid")
    req = OpenTaskRequest("support.triage", "cache", (Grant("read", "tickets.queue"),), 600)
    for _ in range(5):
        tokens.verify(runtime.broker.open_task(wl, req).token, now=runtime.broker.clock())
    assert len(tokens._verified) == 2


def test_a_closed_task_is_refused_although_its_token_is_remembered(runtime, opened):
    req = AuthorizeRequest("read", "tickets.queue", {})
    assert runtime.broker.authorize(opened.token, req).decision.allowed  # now remembered
    runtime.broker.close_task(opened.task.id, by="test")
    after = runtime.broker.authorize(opened.token, req).decision
    assert not after.allowed and after.code == "task_not_active"

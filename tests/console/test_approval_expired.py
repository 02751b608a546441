"""An approval nobody answered shows as `expired` in the console and in `tether approvals`,
before and after the leader's pass moved it, and offers no decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether.cli import main
from tether.runtime import Runtime

from .conftest import csrf_of
from .test_console import _refund_approval


def _expire(runtime: Runtime, approval_id: str, *, move: bool) -> None:
    """Put the broker's clock past the approval's expiry; with ``move``, run the leader's pass."""
    (a,) = [a for a in runtime.broker.list_approvals("pending") if a.id == approval_id]
    runtime.broker.clock = lambda: a.expires_at + 1
    if move:
        assert runtime.broker.expire_approvals() == 1


@pytest.mark.parametrize("move", [False, True], ids=["before-the-pass", "moved"])
def test_the_console_shows_an_expired_approval_as_expired_without_a_decision(
    operator, runtime, make_agent, move
):
    """Listed under `expired`, not `pending`; its page says so and has no approve form; a
    forged decision is refused with `approval_expired`."""
    _, _, _, approval_id = _refund_approval(make_agent)
    token = csrf_of(operator, f"/console/approvals/{approval_id}")
    _expire(runtime, approval_id, move=move)
    assert approval_id not in operator.get("/console/approvals").text
    listed = operator.get("/console/approvals?state=expired").text
    assert approval_id in listed and 'class="badge approval-expired">expired<' in listed
    page = operator.get(f"/console/approvals/{approval_id}").text
    assert "approval-expired" in page and "no longer be decided" in page
    assert 'name="decision"' not in page
    r = operator.post(f"/console/approvals/{approval_id}", data={"decision": "approve", "csrf": token})
    assert r.status_code == 409 and "approval_expired" in r.text


def test_an_unknown_approval_state_in_the_console_is_a_400(operator):
    """`?state=` outside the approval states is refused with `invalid_query`."""
    r = operator.get("/console/approvals?state=bogus")
    assert r.status_code == 400 and "invalid_query" in r.text and "expired" in r.text


def _tether(state: Path, *args: str) -> str:
    res = CliRunner().invoke(main, [*args, "--state-dir", str(state)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def test_tether_approvals_lists_and_shows_an_expired_approval(admin, runtime, make_agent):
    """`tether approvals list --state expired` lists it, the pending list no longer does,
    and `show` says nobody answered and offers no `tether approve`."""
    _, _, _, approval_id = _refund_approval(make_agent)
    _expire(runtime, approval_id, move=True)
    assert "no pending approvals" in _tether(admin, "approvals", "list")
    assert approval_id in _tether(admin, "approvals", "list", "--state", "expired")
    rows = json.loads(_tether(admin, "approvals", "list", "--state", "expired", "--json"))
    assert [(r["approval_id"], r["state"]) for r in rows] == [(approval_id, "expired")]
    show = _tether(admin, "approvals", "show", approval_id)
    assert "expired" in show and "nobody answered" in show and "tether approve" not in show

"""kill -9 the broker at every step of minting a PostgreSQL role; a restart leaves no
tether role without a live lease."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _credhelp import tether_roles

from tether.credentials import leases as ls
from tether.runtime import Runtime
from tether.store.db import Database

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]

STEPS = (
    "lease.after_pending",
    "pg.after_create_role",
    "pg.after_grants",
    "pg.after_commit",
    "lease.after_mint",
)
ROUNDS = 2
CHILD = Path(__file__).with_name("_crash_child.py")


def _run_child(settings, failpoint: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TETHER_FAILPOINT": failpoint or ""}
    return subprocess.run(
        [sys.executable, str(CHILD), str(settings.state_dir), settings.store_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kill_9_at_every_mint_step_leaves_no_orphan_role(pg_settings, pg_server):
    """After SIGKILL at each step (many times) and a restart, every tether role has a live lease."""
    for step in STEPS:
        for _ in range(ROUNDS):
            proc = _run_child(pg_settings, step)
            assert proc.returncode == -9, (step, proc.returncode, proc.stderr[-2000:])
    # The kills did leave debris behind (roles created before the crash), or this proves nothing.
    db = Database(pg_settings.store_url)
    with db.read() as conn:
        active = {x.material.get("role") for x in ls.list_leases(conn) if x.state is ls.LeaseState.ACTIVE}
    db.dispose()
    assert tether_roles(pg_server) - active, "no kill left a role behind"
    control = _run_child(pg_settings, None)
    assert control.returncode == 0 and "minted" in control.stdout, control.stderr[-2000:]

    rt = Runtime.start(pg_settings)
    try:
        rt.credentials.reaper.reap()
        rt.credentials.reaper.reap()  # the second pass finishes what the first began
        with rt.db.read() as conn:
            live = ls.live_role_names(conn, "postgres")
            leases = ls.list_leases(conn)
        roles = tether_roles(pg_server)
        assert roles <= live, f"orphan roles: {roles - live}"
        assert not [x for x in leases if x.state is ls.LeaseState.PENDING]
    finally:
        rt.close()

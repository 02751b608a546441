"""Typed composition: one runtime's parts never leak into another's in the same process."""

from __future__ import annotations

from pathlib import Path

from tether.audit import event as ev
from tether.audit.event import Event
from tether.runtime import Runtime
from tether.testing import TestTrustDomain, make_settings


def _start(state_dir: Path, domain: TestTrustDomain) -> Runtime:
    return Runtime.start(make_settings(state_dir, domain=domain))


def test_two_runtimes_do_not_hear_each_others_audit_listeners(tmp_path: Path, domain: TestTrustDomain):
    """A listener on one runtime's chain hears that runtime's events and none of another's."""
    one, two = _start(tmp_path / "one", domain), _start(tmp_path / "two", domain)
    heard_one: list[Event] = []
    heard_two: list[Event] = []
    try:
        remove_one = one.audit.add_listener(heard_one.append)
        remove_two = two.audit.add_listener(heard_two.append)
        two.reload_policy()
        assert [e.type for e in heard_two] == [ev.POLICY_LOADED]
        assert heard_one == []
        one.reload_policy()
        assert [e.type for e in heard_one] == [ev.POLICY_LOADED]
        assert len(heard_two) == 1
        remove_one()
        remove_two()
    finally:
        one.close()
        two.close()


def test_each_runtime_has_its_own_admin_operations(tmp_path: Path, domain: TestTrustDomain):
    """Admin operations are a per-runtime table built by composition, not a process-wide registry."""
    one, two = _start(tmp_path / "one", domain), _start(tmp_path / "two", domain)
    try:
        assert one.operations is not two.operations
        # Every layer contributed its operations, once.
        for name in ("status", "task.close", "workload.register", "leases.revoke", "mcp.tools.approve"):
            assert name in one.operations
        one.operations.pop("status")
        assert "status" in two.operations
    finally:
        one.close()
        two.close()


def test_runtime_layers_are_built_from_their_own_core(tmp_path: Path, domain: TestTrustDomain):
    """Each runtime's layers hold that runtime's store and chain (no shared service locator)."""
    one, two = _start(tmp_path / "one", domain), _start(tmp_path / "two", domain)
    try:
        assert one.credentials.service is not two.credentials.service
        assert one.pins is not two.pins
        assert one.masker is not two.masker
        assert one.identity is not two.identity
        assert one.audit.filters[0] is one.masker
        assert two.audit.filters[0] is two.masker
    finally:
        one.close()
        two.close()

"""A reload analyzes the new set: warnings are recorded, and `strict` refuses them."""

from __future__ import annotations

import pytest

from tether.audit.chain import capture_events
from tether.errors import PolicyError
from tether.runtime import Runtime

TYPO = '@id("typo") @reason("x")\npermit (principal, action, resource == Tether::Tool::"emial.send");\n'


def test_reload_records_analysis_warnings(runtime: Runtime) -> None:
    """A set with a misspelt tool loads, and `policy.loaded` carries the warning with its line."""
    (runtime.settings.policy_path / "90-typo.cedar").write_text(TYPO)
    with capture_events() as events:
        version = runtime.reload_policy()
    assert runtime.engine.bundle.version == version
    [loaded] = [e for e in events if e.type == "policy.loaded"]
    [warning] = loaded.payload["warnings"]
    assert (warning["kind"], warning["file"], warning["line"]) == ("unknown_entity", "90-typo.cedar", 2)
    assert [w.kind for w in runtime.policy_warnings] == ["unknown_entity"]


def test_strict_reload_refuses_warnings_and_keeps_old_set(runtime: Runtime) -> None:
    """`strict` refuses a set with warnings: the old set stays, `policy.reload_failed` is audited."""
    before = runtime.engine.bundle.version
    (runtime.settings.policy_path / "90-typo.cedar").write_text(TYPO)
    with capture_events() as events, pytest.raises(PolicyError) as info:
        runtime.reload_policy(strict=True)
    assert info.value.code == "policy_warnings"
    assert runtime.engine.bundle.version == before
    assert [e.type for e in events] == ["policy.reload_failed"]

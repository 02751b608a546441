"""@guard with typed arguments: the broker canonicalizes the guarded call's arguments by
the catalog, so a folder rule holds for traversal, encoding and lists there too."""

from __future__ import annotations

from typing import Any

import pytest

from tether.sdk import Client, Denied, guard

TOOL = (
    "  - id: tickets.attach\n    service: tickets\n    arguments: {path: {type: path, roots: [/srv/files]}}\n"
)
POLICY = """
@id("attach")
permit (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"tickets.attach");

@id("attach-public-only")
@reason("attachments come from /srv/files/public")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"tickets.attach")
unless { context.args.under.contains("/srv/files/public") };
"""
SCOPE = [("tool:call", "tickets.attach")]
ran: list[Any] = []


@guard(action="tool:call", resource="tickets.attach")
def attach(path: Any) -> str:
    ran.append(path)
    return "attached"


@pytest.fixture
def settings(settings: Any) -> Any:
    settings.catalog_path.write_text(
        settings.catalog_path.read_text().replace("\ntools:\n", "\ntools:\n" + TOOL, 1)
    )
    (settings.policy_path / "60-attach.cedar").write_text(POLICY)
    return settings


def test_guarded_call_under_the_folder_runs(sdk: Client) -> None:
    """A public file passes the rule and the guarded function runs."""
    ran.clear()
    with sdk.task("support.triage", SCOPE, ttl=60):
        assert attach("/srv/files/public/a.pdf") == "attached"
    assert ran == ["/srv/files/public/a.pdf"]


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/srv/files/public/../secret/key.pem", "policy_forbid"),  # dot-dot traversal
        ("/srv/files/public/%2e%2e/secret/key.pem", "policy_forbid"),  # encoded traversal
        (["/srv/files/public/a.pdf", "/srv/files/secret/key.pem"], "policy_forbid"),  # list packing
        ("/etc/shadow", "path_outside_roots"),  # out of the declared roots
    ],
)
def test_guarded_folder_attacks_are_denied(sdk: Client, path: Any, code: str) -> None:
    """Traversal, encoded traversal, list packing and escapes are denied; the body never runs."""
    ran.clear()
    with sdk.task("support.triage", SCOPE, ttl=60), pytest.raises(Denied) as exc:
        attach(path)
    assert exc.value.code == code and ran == []

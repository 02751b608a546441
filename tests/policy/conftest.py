"""Fixtures for policy tests: the shipped examples and small hand-written policy sets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tether.catalog import Catalog, load_catalog, parse_catalog
from tether.policy import PolicyEngine, PolicyPrincipal, PolicyRequest, action_context
from tether.policy.context import request_context, risk_context, task_context

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tether" / "examples"

TINY_CATALOG = {
    "intents": {"support.triage": ""},
    "services": [
        {"id": "tickets", "sensitivity": 1, "environment": "prod", "egress": "internal"},
        {"id": "slack", "sensitivity": 0, "environment": "prod", "egress": "external"},
    ],
    "tools": [{"id": "tickets.comment", "service": "tickets"}],
}


@pytest.fixture
def example_catalog() -> Catalog:
    return load_catalog(EXAMPLES / "catalog.yaml")


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(TINY_CATALOG)


@pytest.fixture
def write_policies(tmp_path: Path) -> Callable[..., Path]:
    """``write_policies({"a.cedar": text, ...})`` → a fresh directory holding those files."""
    counter = iter(range(1_000))

    def write(files: dict[str, str]) -> Path:
        directory = tmp_path / f"policies{next(counter)}"
        directory.mkdir()
        for name, text in files.items():
            (directory / name).write_text(text)
        return directory

    return write


@pytest.fixture
def engine_for(catalog: Catalog, write_policies: Callable[..., Path]) -> Callable[..., PolicyEngine]:
    def make(files: dict[str, str]) -> PolicyEngine:
        return PolicyEngine.from_paths(write_policies(files), catalog)

    return make


PRINCIPAL = PolicyPrincipal(
    "spiffe://support.example/agent/triage", "support.example", "jwt-svid", {"team": "support"}
)


def make_request(
    catalog: Catalog,
    action: str = "read",
    resource: str = "tickets",
    *,
    arguments: dict[str, object] | None = None,
    environment: str = "prod",
    max_sensitivity_read: int = 0,
    granted: bool = False,
    principal: PolicyPrincipal = PRINCIPAL,
) -> PolicyRequest:
    res = catalog.get(resource)
    assert res is not None
    context = action_context(
        task=task_context(id="t-1", intent="support.triage"),
        risk=risk_context(max_sensitivity_read=max_sensitivity_read),
        request=request_context(method="get", path="/tickets"),
        approval={"granted": granted},
        environment=environment,
    )
    return PolicyRequest(principal, action, res, context, arguments or {})

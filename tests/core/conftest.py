"""Fixtures for broker-level tests: a test trust domain, a runtime on each store, an API client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import TestTrustDomain, make_settings

DOMAIN = "support.example"


@pytest.fixture(scope="session")
def domain() -> TestTrustDomain:
    return TestTrustDomain(DOMAIN)


@pytest.fixture
def settings(tmp_path: Path, store_url: str, domain: TestTrustDomain) -> Any:
    return make_settings(tmp_path / "state", store_url=store_url, domain=domain,
                         overrides={"environment": "prod"})


@pytest.fixture
def runtime(settings: Any) -> Iterator[Runtime]:
    rt = Runtime.start(settings)
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as c:
        yield c


class Agent:
    """Drives the HTTP API as an agent would."""

    def __init__(self, client: TestClient, domain: TestTrustDomain, runtime: Runtime, path: str) -> None:
        self.client, self.domain, self.rt = client, domain, runtime
        self.spiffe_id = domain.spiffe_id(path)

    def svid(self) -> str:
        return self.domain.svid(self.spiffe_id, self.rt.settings.broker_audience)

    def open(self, scope: list[dict[str, str]] | None = None, *, intent: str = "support.triage",
             ttl: int = 600, **extra: Any) -> Any:
        body: dict[str, Any] = {"intent": intent, "description": "test", "ttl_seconds": ttl, **extra}
        if scope is not None:
            body["scope"] = scope
        return self.client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {self.svid()}"})

    def authorize(self, token: str, action: str, resource: str, arguments: dict[str, Any] | None = None) -> Any:
        body: dict[str, Any] = {"action": action, "resource": resource}
        if arguments is not None:
            body["arguments"] = arguments
        return self.client.post("/v1/authorize", json=body, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def agent(client: TestClient, domain: TestTrustDomain, runtime: Runtime) -> Agent:
    return Agent(client, domain, runtime, "orchestrator")


@pytest.fixture
def make_agent(client: TestClient, domain: TestTrustDomain, runtime: Runtime) -> Any:
    return lambda path: Agent(client, domain, runtime, path)

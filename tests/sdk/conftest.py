"""SDK fixtures: a real broker (in memory, SQLite) and SDK clients speaking HTTP to it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tether.runtime import Runtime
from tether.sdk import AsyncClient, Client
from tether.server.app import create_app
from tether.testing import TestTrustDomain


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """The SDK only speaks HTTP: one backend is enough (the core suite covers both)."""
    return sqlite_url


@pytest.fixture
def svid_for(domain: TestTrustDomain) -> Callable[[str], Callable[[str], str]]:
    """An SVID source for the agent at ``path`` in the test trust domain."""
    return lambda path: lambda audience: domain.svid(domain.spiffe_id(path), audience)


@pytest.fixture
def make_client(client: TestClient, runtime: Runtime, svid_for: Any) -> Callable[[str], Client]:
    def make(path: str = "orchestrator") -> Client:
        return Client("", svid=svid_for(path), audience=runtime.settings.broker_audience, http=client)

    return make


@pytest.fixture
def sdk(make_client: Callable[[str], Client]) -> Client:
    return make_client("orchestrator")


@pytest.fixture
def make_async_client(runtime: Runtime, svid_for: Any) -> Callable[[str], AsyncClient]:
    """An AsyncClient on the ASGI app in memory; create it inside the running loop."""
    app = create_app(runtime)

    def make(path: str = "orchestrator") -> AsyncClient:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://broker")
        return AsyncClient(
            "http://broker", svid=svid_for(path), audience=runtime.settings.broker_audience, http=http
        )

    return make


@pytest.fixture
def approve(runtime: Runtime) -> Callable[[str], None]:
    """Grant an approval as an operator would (the admin socket calls the same method)."""
    return lambda approval_id: (runtime.broker.decide_approval(approval_id, grant=True, by="uid:0"), None)[1]


@pytest.fixture
def task_state(runtime: Runtime) -> Callable[[str], str]:
    return lambda task_id: runtime.broker.get_task(task_id)[0].state.value

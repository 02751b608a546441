"""Defence in depth: an exception that escapes a handler is a JSON 500 `internal_error`
and an audited deny — never text/plain, never a missing record."""

from __future__ import annotations

from starlette.routing import Route
from starlette.testclient import TestClient

from tether.audit.chain import capture_events
from tether.server.app import create_app, guarded


def test_escaped_exception_is_json_500_and_an_audited_deny(runtime):
    """A handler bug (here a deliberate RuntimeError) answers JSON 500 and records a deny."""

    async def boom(request):
        raise RuntimeError("a bug")

    app = create_app(runtime, extra_routes=[Route("/boom", guarded(boom), methods=["GET"])])
    with TestClient(app, raise_server_exceptions=False) as client, capture_events() as events:
        r = client.get("/boom")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "internal_error"
    assert [(e.type, e.payload["outcome"], e.payload["code"]) for e in events] == [
        ("decision", "deny", "internal_error")
    ]
    assert events[0].payload["request"] == {"method": "GET", "path": "/boom"}

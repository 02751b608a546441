"""/openapi.json documents every route, and real answers match their documented schemas.

The document is generated from the wire models the handlers parse and render with
(``tether.wire``); these tests keep the three from drifting: every Starlette route the
broker mounts is an operation of the document (and back), and one journey through every
route — real HTTP against a broker served by uvicorn on a loopback socket — validates each
answer, success and error, against the schema documented for its status with
``jsonschema`` (OpenAPI 3.1 schemas are JSON Schema 2020-12).
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import uvicorn
from starlette.routing import Mount, Route

from tether.errors import ERROR_STATUSES, ErrorCode
from tether.server.app import create_app
from tether.server.openapi import OPERATIONS, document
from tether.server.protocol import bounded_protocol
from tether.wire import codegen

from .conftest import GATEWAY_PATH

READ_Q = {"action": "read", "resource": "tickets.queue"}
SEND = {"action": "send", "resource": "slack-external.post"}
JSON = {"Content-Type": "application/json"}


def _served(app: Any) -> tuple[set[tuple[str, str]], set[str]]:
    routes, mounts = set(), set()
    for route in app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    routes.add((route.path, method.lower()))
        elif isinstance(route, Mount):
            mounts.add(route.path)
    return routes, mounts


def _documented() -> set[tuple[str, str]]:
    return {(path, method) for path, ops in document()["paths"].items() for method in ops}


#: Operations served only when a setting mounts them (off in these tests).
CONDITIONAL = {(op.path, op.method) for op in OPERATIONS if op.only_when}


def test_every_route_is_documented(runtime):
    """Each (path, method) the broker serves is an operation of /openapi.json, and back."""
    routes, mounts = _served(create_app(runtime))
    assert routes - _documented() == set(), "document these routes in server/openapi.py"
    assert _documented() - routes == CONDITIONAL, "these documented operations are not served"
    assert len(routes) == len(OPERATIONS) - len(CONDITIONAL) >= 21
    # Mounted apps are not the API: the console's HTML pages (and the in-process HTTP
    # gateway, off here) only.
    assert mounts <= {"/console", runtime.settings.gateway.http_mount}


def test_every_operation_documents_the_error_body():
    """Each operation answers its errors with the one ErrorBody; 500 is always documented."""
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            codes = {int(s) for s in op["responses"]}
            assert {405, 414, 431, 500} <= codes, (path, method)
            own = {s for o in OPERATIONS if (o.path, o.method) == (path, method) for s in o.responses}
            for status in codes:
                # Statuses an operation answers with its own body: /readyz's 503 (not ready is
                # an answer, not an error), the OAuth endpoints' RFC 6749 errors.
                if status >= 400 and status in ERROR_STATUSES and status not in own:
                    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)
    error = document()["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"code", "message"}
    codes = document()["components"]["schemas"]["ErrorCode"]["enum"]
    assert {"malformed_json", "unknown_field", "missing_field", "invalid_scope"} <= set(codes)
    assert set(codes) == {c.value for c in ErrorCode}


def test_request_schemas_declare_required_fields_bounds_and_no_extras():
    """Request bodies forbid unknown fields and say what is required and how long it may be."""
    schemas = document()["components"]["schemas"]
    authorize = schemas["AuthorizeRequestBody"]
    assert authorize["additionalProperties"] is False
    assert set(authorize["required"]) == {"action", "resource"}
    assert authorize["properties"]["action"]["maxLength"] == 64
    delegate = schemas["DelegateRequest"]
    assert set(delegate["required"]) == {"child", "scope", "ttl_seconds"}
    assert delegate["properties"]["ttl_seconds"]["minimum"] == 1
    opening = schemas["OpenTaskRequest"]["properties"]
    assert {"delegator_token", "delegation", "intent", "scope", "ttl_seconds"} <= set(opening)
    # Left out is fine, null is not: the schema says so (no `null` alternative).
    assert opening["scope"]["type"] == "array" and opening["scope"]["maxItems"] == 100
    assert opening["ttl_seconds"]["type"] == "integer"
    assert schemas["Outcome"]["enum"] == ["allow", "deny", "approval_required"]
    assert schemas["TaskState"]["enum"] == ["active", "closed", "expired", "revoked"]


def test_served_document_is_the_generated_one(client):
    """GET /openapi.json serves exactly the generated document."""
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json() == document()


# -- a journey through every route, over real HTTP ------------------------------------------


@pytest.fixture
def served(runtime) -> Iterator[str]:
    """The broker's app on uvicorn with the broker's own bounded HTTP protocol, on loopback."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    protocol = bounded_protocol(header_timeout=10, body_timeout=30, max_connections=64)
    config = uvicorn.Config(create_app(runtime), log_level="error", http=protocol, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # bounded: the thread binds nothing new, it only starts serving
        assert thread.is_alive() and time.monotonic() < deadline, "the broker did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


class Checked:
    """An HTTP client whose every JSON answer is validated against the documented schema."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=30)
        self.doc = document()
        self.seen: set[tuple[str, str, int]] = set()

    def _operation(self, method: str, url: str) -> tuple[str, dict[str, Any]]:
        path = url.split("?")[0]
        for template, ops in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path) and method in ops:
                return template, ops[method]
        raise AssertionError(f"{method.upper()} {path} is not documented")

    def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        r = self.http.request(method.upper(), url, **kwargs)
        template, op = self._operation(method, url)
        documented = op["responses"].get(str(r.status_code))
        assert documented is not None, f"{method} {template} answered undocumented {r.status_code}: {r.text}"
        content = documented.get("content", {})
        if "application/json" in content and "schema" in content["application/json"]:
            assert r.headers["content-type"].startswith("application/json"), r.headers
            self.validate(r.json(), content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1])
        self.seen.add((template, method, r.status_code))
        return r

    def validate(self, value: Any, schema_name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{schema_name}", **self.doc}
        jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_answers_match_their_documented_schemas(served, agent, domain, runtime, credentials):
    """One journey through every route: each answer validates against its documented schema."""
    c = Checked(served)
    enforcer = {"X-Tether-Enforcer": domain.svid(GATEWAY_PATH, runtime.settings.broker_audience)}
    svid = _bearer(agent.svid())

    for path in ("/healthz", "/readyz", "/.well-known/jwks.json", "/.well-known/spiffe-bundle"):
        assert c.call("get", path).status_code == 200
    assert c.call("get", "/openapi.json").json() == document()

    scope = [READ_Q, {"action": "credential:issue", "resource": "tickets"}]
    body = {"intent": "support.triage", "description": "schema", "scope": scope, "ttl_seconds": 600}
    r = c.call("post", "/v1/tasks", json=body, headers=svid)
    assert r.status_code == 201, r.text
    tok, task_id = r.json()["task_token"], r.json()["task_id"]
    task = _bearer(tok)
    # Refusals answer the error body: unknown field, null scope, no credential, bad type.
    r = c.call("post", "/v1/tasks", json={**body, "extra": 1}, headers=svid)
    assert r.json()["code"] == "unknown_field"
    r = c.call("post", "/v1/tasks", json={**body, "scope": None}, headers=svid)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_scope")
    assert c.call("post", "/v1/tasks", json=body).status_code == 401
    # The documented bound is the largest any configuration allows; the configured one holds.
    too_long = "x" * (runtime.settings.limits.max_token_bytes + 1)
    r = c.call("post", "/v1/tasks", json={**body, "delegator_token": too_long}, headers=svid)
    assert (r.status_code, r.json()["field"]) == (400, "delegator_token")
    r = c.call("post", "/v1/authorize", json={"action": 1, "resource": "x"}, headers=task)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (400, "invalid_field", "action")
    # The edge's own refusals (405, 404) answer the same error body.
    for r in (c.http.get("/v1/tasks", headers=task), c.http.get("/v1/nowhere")):
        assert r.status_code in (404, 405)
        c.validate(r.json(), "ErrorBody")

    assert c.call("get", f"/v1/tasks/{task_id}", headers=task).json()["state"] == "active"
    assert c.call("get", "/v1/tasks/tsk_nope", headers=task).status_code in (403, 404)
    child = domain.spiffe_id("reader")
    r = c.call(
        "post",
        f"/v1/tasks/{task_id}/delegations",
        json={"child": child, "scope": [READ_Q], "ttl_seconds": 60},
        headers=task,
    )
    assert r.status_code == 201, r.text

    assert c.call("post", "/v1/authorize", json=READ_Q, headers=task).json()["decision"] == "allow"
    r = c.call("post", "/v1/authorize", json={"action": "read", "resource": "crm"}, headers=task)
    assert r.json()["decision"] == "deny"
    with_context = {**READ_Q, "arguments": {"ticket": "T-1"}, "context": {"method": "GET", "path": "/q"}}
    r = c.call("post", "/v1/authorize", json=with_context, headers=task)
    assert r.json()["decision"] == "allow", r.text
    # A second task whose intent may post to the customer channel (an inject credential).
    r = c.call("post", "/v1/tasks", json={"intent": "reporting.weekly", "scope": [SEND]}, headers=svid)
    assert r.status_code == 201, r.text
    poster = _bearer(r.json()["task_token"])
    r = c.call("post", "/v1/authorize", json=SEND, headers=poster)
    assert r.json()["decision"] == "allow" and "lease_id" in r.json()["credential"], r.text

    r = c.call("post", "/v1/credentials", json={"resource": "tickets"}, headers=task)
    assert r.status_code == 201, r.text
    assert c.call("post", "/v1/credentials", json={"resource": "crm"}, headers=task).status_code == 403
    r = c.call("post", "/v1/introspect", data={"token": tok}, headers=svid)
    assert r.json()["active"] is True
    assert c.call("post", "/v1/introspect", data={"token": "x.y.z"}, headers=svid).json() == {"active": False}
    assert c.call("get", "/v1/revocations?since=0", headers=svid).status_code == 200
    assert c.call("get", "/v1/revocations?limit=0", headers=svid).status_code == 400

    gw = {**task, **enforcer}
    r = c.call("post", "/v1/gateway/authorize", json=SEND, headers={**poster, **enforcer})
    assert r.status_code == 200 and r.json()["credential"]["for_enforcer"] is not None, r.text
    r = c.call("post", "/v1/gateway/authorize", json=READ_Q, headers=gw)
    assert r.json()["decision"]["decision"] == "allow"
    assert c.call("post", "/v1/gateway/authorize", json=SEND, headers=poster).status_code == 401
    visible = {"action": "read", "resources": ["tickets.queue"]}
    r = c.call("post", "/v1/gateway/visible", json=visible, headers=gw)
    assert r.json() == {"resources": ["tickets.queue"]}
    r = c.call("post", "/v1/gateway/calls", json={"type": "call.forwarded", "payload": {}}, headers=gw)
    assert r.status_code == 200, r.text
    r = c.call("post", "/v1/gateway/arguments", json={"resources": ["tickets.queue"]}, headers=gw)
    assert r.status_code == 200, r.text
    tools = {"echo": {"name": "echo", "description": "echo", "inputSchema": {"type": "object"}}}
    r = c.call("post", "/v1/gateway/tools", json={"server": "demo", "tools": tools}, headers=gw)
    assert r.status_code == 200, r.text

    r = c.call("post", "/v1/gateway/token", json={}, headers=gw)
    assert r.status_code == 200 and r.json()["task_id"] == task_id, r.text
    r = c.call("post", f"/v1/tasks/{task_id}/close", headers=task)
    assert r.status_code == 200 and task_id in r.json()["closed"]
    assert c.call("post", "/v1/revoke-token", data={"token": tok}, headers=svid).status_code == 200

    assert c.call("get", "/metrics").status_code in (200, 404)

    answered = {(p, m) for p, m, s in c.seen if s < 300}
    # The event stream is a long-lived answer; its schema is its media type. The OAuth
    # server is off here (tests/oauth drive it); /metrics may be disabled.
    assert _documented() - answered - CONDITIONAL <= {("/v1/revocations/stream", "get"), ("/metrics", "get")}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"action": "read", "action": "send", "resource": "tickets.queue"}',
        b'{"action": "read", "resource": "tickets.queue", "arguments": {"n": NaN}}',
        b'{"action": "read", "resource": "tickets.queue", "arguments": {"n": 9007199254740993}}',
        b'{"action": "read", "resource": "tickets.queue", "arguments": {"n": 1e999}}',
    ],
    ids=["duplicate-key", "nan", "huge-int", "overflowing-float"],
)
def test_strict_decoding_is_kept_in_front_of_the_models(served, agent, raw):
    """Duplicate keys, NaN and numbers JSON cannot carry exactly stay `400 malformed_json`."""
    tok = agent.open([READ_Q]).json()["task_token"]
    r = Checked(served).call("post", "/v1/authorize", content=raw, headers={**_bearer(tok), **JSON})
    assert (r.status_code, r.json()["code"]) == (400, "malformed_json")


@pytest.mark.parametrize(
    "model, doc, code, field",
    [
        ("OpenTaskRequest", {"intent": "x", "scope": None}, "invalid_scope", "scope"),
        ("OpenTaskRequest", {"intent": "x", "ttl_seconds": None}, "missing_field", "ttl_seconds"),
        ("OpenTaskRequest", {"intent": "x", "ttl_seconds": "60"}, "invalid_field", "ttl_seconds"),
        ("OpenTaskRequest", {"intent": "x", "ttl_seconds": True}, "invalid_field", "ttl_seconds"),
        (
            "OpenTaskRequest",
            {"intent": "x", "scope": [{"action": "read"}]},
            "missing_field",
            "scope[0].resource",
        ),
        ("OpenTaskRequest", {"intent": "x", "scope": [READ_Q] * 101}, "invalid_scope", "scope"),
        ("DelegateRequest", {"child": "c", "ttl_seconds": 60}, "invalid_scope", "scope"),
        (
            "DelegateRequest",
            {"child": "c", "scope": [{**READ_Q, "x": 1}], "ttl_seconds": 1},
            "unknown_field",
            "scope[0].x",
        ),
        ("AuthorizeRequestBody", {**READ_Q, "context": {"sudo": 1}}, "unknown_field", "context.sudo"),
        (
            "AuthorizeRequestBody",
            {**READ_Q, "arguments": {str(i): i for i in range(65)}},
            "invalid_field",
            "arguments",
        ),
        ("AuthorizeRequestBody", {"action": "a" * 65, "resource": "r"}, "invalid_field", "action"),
    ],
)
def test_models_refuse_what_the_hand_parser_refused(model, doc, code, field):
    """Strict as before: null is not "absent", no coercion, bounds hold, fields named by path."""
    from tether.errors import InvalidRequest
    from tether.wire import models as m
    from tether.wire.validate import parse

    with pytest.raises(InvalidRequest) as exc:
        parse(getattr(m, model), doc)
    assert (exc.value.code, exc.value.details["field"]) == (code, field)


# -- the client's records -----------------------------------------------------------------


def test_the_sdk_records_are_generated_from_the_current_models():
    """src/tether/sdk/_wire.py is what the wire models generate (`python -m tether.wire.codegen`)."""
    assert codegen.TARGET.read_text() == codegen.generated(), "stale: run `python -m tether.wire.codegen`"


def test_the_sdk_does_not_import_pydantic_or_the_wire_models():
    """The client shares the shapes through generated code, never by importing the broker's models."""
    probe = (
        "import sys, tether.sdk, tether.sdk.integrations; "
        "print(sorted(m for m in ('pydantic', 'tether.wire', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_generated_record_reads_what_the_server_renders():
    """A server answer rendered through its model is read back by the client's record unchanged."""
    from tether.sdk import _wire
    from tether.wire import models as m
    from tether.wire.validate import render

    view = {
        "decision": "allow",
        "decision_id": "dec_1",
        "reasons": [{"policy_id": "p", "message": "ok"}],
        "policy_version": "v1",
        "credential": {"lease_id": "lse_1", "token": "t"},
    }
    body = render(m.AuthorizeResponse, view)
    assert _wire.AuthorizeResponse.from_wire(body).to_wire() == body
    with pytest.raises(_wire.WireError):
        _wire.AuthorizeResponse.from_wire({**body, "decision": "maybe"})

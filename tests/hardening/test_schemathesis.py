"""schemathesis over the broker's own `/openapi.json`: every operation the document
describes (new routes are picked up as the document grows), with and without valid
credentials. Invariants: no 5xx, responses match the document, and nothing that needs a
credential answers 2xx without one."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks

from tether.server.app import create_app

#: Examples per operation and mode: with ~20 operations, several hundred requests a mode.
EXAMPLES = 30
CHECKS = [checks.not_a_server_error, checks.response_schema_conformance, checks.content_type_conformance]


@pytest.fixture
def schema(runtime):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(runtime))


@pytest.fixture
def credentials(agent, domain, runtime):
    opened = agent.open([{"action": "read", "resource": "tickets.queue"}]).json()
    # An enforcement point's own SVID (not listed in `gateway.enforcers` here: a 403 answer).
    enforcer = domain.svid(domain.spiffe_id("gateways/edge"), runtime.settings.broker_audience)
    return {"svid": agent.svid(), "task": opened["task_token"], "enforcer": enforcer}


def _operations(schema):
    ops = [result.ok() for result in schema.get_all_operations()]
    assert ops, "the OpenAPI document describes no operation"
    # The event stream answers for `timeout` seconds (default 300): a long-lived answer, not
    # a request/response pair; its bounds are tested in tests/credentials.
    return [op for op in ops if not op.path.endswith("/revocations/stream")]


def _headers(schemes: list[str], credentials: dict[str, str]) -> dict[str, str]:
    """The credentials an operation's security names: a bearer token and/or the enforcer header."""
    headers = {}
    bearer = next((s for s in schemes if s in ("svid", "task")), None)
    if bearer is not None:
        headers["Authorization"] = f"Bearer {credentials[bearer]}"
    if "enforcer" in schemes:
        headers["X-Tether-Enforcer"] = credentials["enforcer"]
    return headers


def _short(case) -> None:
    """A long-poll waits up to `wait` seconds: the fuzzer asks for none."""
    if case.query and "wait" in case.query:
        case.query["wait"] = 0


def _schemes(op) -> list[str]:
    return [name for req in op.definition.raw.get("security", []) for name in req]


def _drive(op, send) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: CI failures reproduce locally
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy())
    def run(case):
        send(case)

    run()


def test_schemathesis_with_valid_credentials_finds_no_5xx_or_schema_violation(schema, credentials):
    """With the right credential for each operation: 0 5xx, every response as documented."""
    sent: Counter[int] = Counter()
    for op in _operations(schema):
        schemes = _schemes(op)
        headers = _headers(schemes, credentials)

        def send(case, headers=headers):
            _short(case)
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            sent[response.status_code // 100] += 1

        _drive(op, send)
    print(f"\nschemathesis with credentials: {sum(sent.values())} requests, by class {dict(sent)}")
    assert sent[5] == 0


def test_schemathesis_without_credentials_gets_no_2xx_and_no_5xx(schema):
    """Without a credential: nothing that needs one answers 2xx, and nothing answers 5xx."""
    sent: Counter[int] = Counter()
    for op in _operations(schema):
        needs_credential = bool(_schemes(op))

        def send(case, needs_credential=needs_credential):
            drop = ("authorization", "x-tether-enforcer")
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in drop}
            _short(case)
            response = case.call_and_validate(checks=CHECKS)
            sent[response.status_code // 100] += 1
            if needs_credential:
                assert not 200 <= response.status_code < 300, (case.method, case.path, response.status_code)

        _drive(op, send)
    print(f"\nschemathesis without credentials: {sum(sent.values())} requests, by class {dict(sent)}")
    assert sent[5] == 0

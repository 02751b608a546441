"""Property tests for every parser at the edge. Invariant: any input gives a valid result
or a ``TetherError`` with a code (a 4xx at the HTTP edge) — never another exception,
which would be a 500. Each test prints how many inputs it tried."""

from __future__ import annotations

import json
import string
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.catalog import load_catalog, parse_catalog
from tether.config import load_settings
from tether.errors import TetherError
from tether.gateway.routes import load_routes, parse_routes
from tether.identity.jwt import b64url_encode, verify_jwt
from tether.identity.service import peek_issuer
from tether.identity.spiffe_id import parse_spiffe_id
from tether.server.parsing import (
    MAX_SAFE_INT,
    header_int,
    parse_authorize,
    parse_json,
    parse_json_object,
    parse_scope,
    parse_uint,
)

FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_like = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=25,
)


def _fits(fn, *args, **kwargs):
    """Call ``fn``; a ``TetherError`` must carry a code. Anything else escapes (fails)."""
    try:
        return fn(*args, **kwargs)
    except TetherError as exc:
        assert exc.code and isinstance(exc.code, str)
        assert exc.status < 500 or (exc.status == 500 and exc.code.endswith("_invalid"))
        return None


# -- JSON bodies --------------------------------------------------------------------------
@FAST
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_any_bytes_are_json_or_malformed_json(raw):
    """Arbitrary bytes: a JSON value the rest of the broker can hold, or `malformed_json`."""
    doc = _fits(parse_json, raw)
    if doc is not None:
        json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")  # canonical form exists


@FAST
@given(doc=json_like)
def test_any_json_document_round_trips_or_is_refused(doc):
    """Any JSON text (NaN, surrogates, huge ints included) parses to a representable value or is refused."""
    raw = json.dumps(doc, ensure_ascii=True).encode()
    out = _fits(parse_json, raw)
    if out is not None:
        text = json.dumps(out, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        for n in _ints(out):
            assert abs(n) <= MAX_SAFE_INT


def _ints(v):
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _ints(x)
    elif isinstance(v, list):
        for x in v:
            yield from _ints(x)


@FAST
@given(
    doc=st.dictionaries(
        st.sampled_from(["action", "resource", "arguments", "context", "x"]), json_like, max_size=5
    )
)
def test_any_authorize_body_is_a_request_or_refused(doc):
    """Authorize bodies of any shape: an AuthorizeRequest or a coded refusal."""
    raw = json.dumps(doc).encode()
    parsed = _fits(parse_json_object, raw)
    if parsed is not None:
        _fits(parse_authorize, parsed, trace_id=None)


@FAST
@given(value=json_like)
def test_any_scope_is_grants_or_invalid_scope(value):
    """A `scope` of any shape: grants or a coded refusal."""
    _fits(parse_scope, value)


# -- query parameters and headers ---------------------------------------------------------
@FAST
@given(raw=st.text(max_size=30))
def test_any_query_integer_is_in_range_or_refused(raw):
    """`?since=`, `?limit=`, `?wait=` values: an int in range or `invalid_field` (never ValueError)."""
    n = _fits(parse_uint, raw, "since", lo=0, hi=2**62)
    if n is not None:
        assert 0 <= n <= 2**62 and raw.isascii()


class _Headers:
    def __init__(self, values):
        self.values = values

    def getlist(self, name):
        return self.values


@FAST
@given(values=st.lists(st.text(alphabet=st.characters(max_codepoint=255), max_size=25), max_size=3))
def test_any_integer_header_is_in_range_or_invalid_header(values):
    """`Content-Length` / `Last-Event-ID` (Latin-1 decoded): an int or `invalid_header`."""
    _fits(header_int, _Headers(values), "last-event-id", lo=0, hi=2**62)


# -- identities and tokens ----------------------------------------------------------------
@FAST
@given(
    value=st.text(max_size=80)
    | st.builds(lambda a, b: f"spiffe://{a}/{b}", st.text(max_size=20), st.text(max_size=40))
)
def test_any_spiffe_id_parses_or_is_invalid_spiffe_id(value):
    """Any string: a SPIFFE ID or `invalid_spiffe_id`."""
    _fits(parse_spiffe_id, value)


segment = st.binary(max_size=60).map(b64url_encode) | json_like.map(
    lambda d: b64url_encode(json.dumps(d).encode())
)


@FAST
@given(parts=st.lists(segment | st.text(max_size=20), min_size=1, max_size=4))
def test_any_jwt_segments_verify_or_are_unauthenticated(parts):
    """Arbitrary compact-JWS segments: refused with a code (no key can match), never an exception."""
    token = ".".join(parts)
    _fits(
        verify_jwt,
        token,
        key_for=lambda header: None,
        algorithms=["ES256"],
        audience="aud",
        issuer="iss",
        typ=["JWT"],
        leeway=0,
    )
    peek_issuer(token, 16 * 1024)  # the unverified peek never raises


@given(depth=st.integers(1_000, 60_000))
@settings(max_examples=5, deadline=None, database=None)
def test_deeply_nested_token_payload_is_no_crash(depth):
    """A JWT payload nested thousands deep (RecursionError in json) is refused, not a 500."""
    token = "e30." + b64url_encode(b"[" * depth) + ".sig"
    assert peek_issuer(token, 10**6) is None
    _fits(
        verify_jwt,
        token,
        key_for=lambda h: None,
        algorithms=["ES256"],
        audience="a",
        issuer="i",
        typ=None,
        leeway=0,
    )


# -- files: routes, catalog, config -------------------------------------------------------
toml_value = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=10), c, max_size=4)
    ),
    max_leaves=15,
)
ROUTE_KEYS = [
    "routes",
    "gateway",
    "prefix",
    "upstream",
    "resource",
    "action",
    "path",
    "methods",
    "rules",
    "options",
]


@FAST
@given(doc=st.dictionaries(st.sampled_from(ROUTE_KEYS), toml_value, max_size=4))
def test_any_routes_document_loads_or_is_config_invalid(doc):
    """A routes document of any shape: a route table or a coded `ConfigError`."""
    _fits(parse_routes, doc)


CATALOG_KEYS = [
    "services",
    "tools",
    "datasets",
    "intents",
    "id",
    "sensitivity",
    "environment",
    "egress",
    "owner",
]


@FAST
@given(doc=st.dictionaries(st.sampled_from(CATALOG_KEYS), json_like, max_size=4) | json_like)
def test_any_catalog_document_loads_or_is_catalog_invalid(doc):
    """A catalog document of any shape: a catalog or a coded `ConfigError`."""
    _fits(parse_catalog, doc)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prop")


@SLOW
@given(text=st.text(max_size=300))
def test_any_routes_and_catalog_text_loads_or_is_refused(files, text):
    """Any text as a routes (TOML) or catalog (YAML) file: loaded or refused with a code."""
    (files / "routes.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    (files / "catalog.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    _fits(load_routes, files / "routes.toml")
    _fits(load_catalog, files / "catalog.yaml")


SETTING_KEYS = [
    "listen",
    "environment",
    "trust_domain",
    "node_id",
    "store",
    "tasks",
    "limits",
    "identity",
    "credentials",
]


@SLOW
@given(doc=st.dictionaries(st.sampled_from(SETTING_KEYS), toml_value, max_size=4), env=st.text(max_size=20))
def test_any_config_loads_or_is_config_invalid(files, doc, env):
    """A `tether.toml` of any shape plus a `TETHER_*` variable: settings or `config_invalid`."""
    state = files / "state"
    state.mkdir(exist_ok=True)
    try:
        text = _to_toml(doc)
        tomllib.loads(text)
    except (ValueError, TypeError):
        return  # not expressible as TOML: nothing a user could write
    (state / "tether.toml").write_text(text)
    _fits(load_settings, state, environ={"TETHER_LISTEN": env})


def _to_toml(doc) -> str:
    lines, tables = [], []
    for k, v in doc.items():
        (tables if isinstance(v, dict) else lines).append((k, v))
    out = [f"{k} = {_toml_value(v)}" for k, v in lines]
    for k, v in tables:
        out.append(f"[{k}]")
        out.extend(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if kk)
    return "\n".join(out) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if k) + "}"
    raise TypeError(type(v))


# -- through HTTP: any body on the decision route -----------------------------------------
@pytest.fixture
def task_token(agent):
    return agent.open([{"action": "read", "resource": "tickets.queue"}]).json()["task_token"]


def test_any_authorize_body_over_http_is_never_5xx(client, task_token):
    """Arbitrary bodies to `/v1/authorize` with a valid token: a decision or a coded 4xx."""
    seen: list[int] = []

    @SLOW
    @given(body=st.binary(max_size=120) | json_like.map(lambda d: json.dumps(d).encode()))
    def run(body):
        r = client.post(
            "/v1/authorize",
            content=body,
            headers={"Authorization": f"Bearer {task_token}", "Content-Type": "application/json"},
        )
        seen.append(r.status_code)
        assert r.status_code < 500, r.text
        assert "code" in r.json() or "decision" in r.json()

    run()
    print(f"\nproperty: {len(seen)} authorize requests, 5xx: {sum(s >= 500 for s in seen)}")

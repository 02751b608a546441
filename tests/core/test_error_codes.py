"""One ErrorCode enum and one status mapping, used by the server, the gateways and the SDK."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

import tether
from tether import errors
from tether.errors import ErrorCode, TetherError, error_class, http_status
from tether.sdk.errors import error_from_response

SRC = Path(tether.__file__).parent
# `code="x"` arguments, `"code": "x"` bodies and `_CODE = "x"` constants in the source, and
# the helpers that take the code first (`_fail("x", …)` of the JWT and DPoP verifiers, the
# raw protocol answers `raw_json_response(400, "x", …)`) or last (`_refuse(…, "x")`).
_LITERALS = re.compile(
    r'''(?:\bcode=|"code":\s*|_CODE\s*=\s*|default_code\s*=\s*|\b_fail\(\s*|raw_json_response\(\d+,\s*)"([a-z_.]+)"'''
    r"""|\b_refuse\([^()\n]*,\s*"([a-z_.]+)"\)"""
)

HTTP_CLASSES = [
    errors.InvalidRequest,
    errors.PayloadTooLarge,
    errors.HeadersTooLarge,
    errors.Unauthenticated,
    errors.Forbidden,
    errors.NotFound,
    errors.MethodNotAllowed,
    errors.Conflict,
    errors.TooManyRequests,
    errors.Unavailable,
]


def test_every_code_in_the_source_is_an_error_code():
    """A code string written anywhere in src/ is a member of ErrorCode (the wire contract)."""
    unknown = {}
    for path in SRC.rglob("*.py"):
        for m in _LITERALS.finditer(path.read_text()):
            code = m.group(1) or m.group(2)
            if code not in ErrorCode._value2member_map_:
                unknown.setdefault(code, str(path.relative_to(SRC)))
    assert unknown == {}, f"add these to tether.errors.ErrorCode: {unknown}"


def test_error_codes_are_plain_strings_on_the_wire():
    """An ErrorCode member equals its string and JSON-encodes as it."""
    exc = errors.InvalidRequest("x", code=ErrorCode.MISSING_FIELD)
    assert exc.code == "missing_field"
    assert json.loads(json.dumps(exc.to_dict())) == {"code": "missing_field", "message": "x"}


@pytest.mark.parametrize("cls", HTTP_CLASSES, ids=lambda c: c.__name__)
def test_status_mapping_round_trips(cls: type[TetherError]):
    """The class a status comes from is the class the client rebuilds from that status."""
    assert error_class(http_status(cls("x"))) is cls


def test_non_http_errors_are_500_and_unknown_statuses_fail_closed():
    """Config/policy errors answer 500; a status no class has (502, 500) is Unavailable."""
    assert http_status(errors.ConfigError("x")) == 500
    assert error_class(502) is errors.Unavailable
    assert error_class(500) is errors.Unavailable


def test_sdk_maps_413_to_payload_too_large():
    """The SDK rebuilds a 413 as PayloadTooLarge (an InvalidRequest), from the same table."""
    response = httpx.Response(413, json={"code": "payload_too_large", "message": "too big", "limit": 10})
    exc = error_from_response(response)
    assert type(exc) is errors.PayloadTooLarge
    assert isinstance(exc, errors.InvalidRequest)
    assert exc.code == "payload_too_large"
    assert exc.details == {"limit": 10}

"""The stdio relay's own framing (`tether.gateway.mcp_relay`): frames written by orjson are
the SDK transport's frames, and an upstream line is judged as the SDK's models judge it,
whether or not orjson can read it. No process: the relay's writer and reader halves alone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import mcp_types as types
import pytest

from tether.gateway.mcp_relay import Relay, _frame, _request_frame

PARAMS: list[dict[str, Any]] = [
    {"name": "echo", "arguments": {"text": "hi"}},
    {"name": "read", "arguments": {"path": '/tmp/é ☃ "q" \\ \n\t\u0001', "n": 3, "f": 0.1, "big": 1e300}},
    {"name": "x", "arguments": {"list": [1, [2, {"z": None}], True, False], "neg": -(2**63)}},
    {"name": "x", "arguments": {}},
]


@pytest.mark.parametrize("params", PARAMS)
def test_request_frame_is_the_sdk_transports_frame(params: dict[str, Any]) -> None:
    sdk = _frame(types.JSONRPCRequest(jsonrpc="2.0", id="tether-1", method="tools/call", params=params))
    assert _request_frame("tether-1", "tools/call", params) == sdk


def test_request_orjson_cannot_write_is_written_the_sdks_way() -> None:
    """An integer past 64 bits (orjson refuses it) still goes out, as the SDK writes it."""
    params = {"name": "x", "arguments": {"n": 2**70}}
    sdk = _frame(types.JSONRPCRequest(jsonrpc="2.0", id="tether-2", method="tools/call", params=params))
    assert _request_frame("tether-2", "tools/call", params) == sdk
    assert json.loads(sdk)["params"]["arguments"]["n"] == 2**70


def answer(line: bytes, rid: str = "tether-1") -> tuple[bool, Any]:
    """Feed one stdout line to a relay with a call ``rid`` waiting: (taken, what the call got)."""

    async def go() -> tuple[bool, Any]:
        relay = Relay()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        relay._pending[rid] = waiter
        taken = relay._answered(line)
        return taken, (waiter.result() if waiter.done() else None)

    return anyio.run(go)


def test_a_plain_result_is_handed_to_its_call() -> None:
    taken, got = answer(b'{"jsonrpc":"2.0","id":"tether-1","result":{"content":[],"isError":false}}')
    assert taken and got == {"content": [], "isError": False}


def test_an_answer_orjson_cannot_read_still_reaches_its_call() -> None:
    """NaN and integers past 64 bits are JSON the stdlib (and the SDK) read: the call gets them."""
    line = b'{"jsonrpc":"2.0","id":"tether-1","result":{"n":1180591620717411303424,"x":NaN}}'
    taken, got = answer(line)
    assert taken and got["n"] == 2**70 and got["x"] != got["x"]


def test_an_error_answer_is_the_upstreams_error() -> None:
    line = b'{"jsonrpc":"2.0","id":"tether-1","error":{"code":-32602,"message":"no such tool"}}'
    taken, got = answer(line)
    assert taken and isinstance(got, types.ErrorData)
    assert (got.code, got.message) == (-32602, "no such tool")


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"1.0","id":"tether-1","result":{}}',  # not JSON-RPC 2.0
        b'{"jsonrpc":"2.0","id":"tether-1","result":[1]}',  # a result that is no object
        b'{"jsonrpc":"2.0","id":"tether-1","error":{"code":"x"}}',  # an error without its fields
        b'{"jsonrpc":"2.0","id":"tether-1"}',  # neither
    ],
)
def test_a_malformed_answer_fails_its_call_as_malformed(line: bytes) -> None:
    taken, got = answer(line)
    assert taken and isinstance(got, types.ErrorData) and got.code == types.INTERNAL_ERROR


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":"tether-1","method":"sampling/createMessage","params":{}}',
        b'{"jsonrpc":"2.0","id":"tether-9","result":{}}',  # no call of ours waits for it
        b'{"jsonrpc":"2.0","id":1,"result":{}}',  # the session's id space
        b"not json",
    ],
)
def test_what_answers_no_relayed_call_is_left_to_the_session(line: bytes) -> None:
    taken, got = answer(line)
    assert not taken and got is None

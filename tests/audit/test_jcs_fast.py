"""The orjson fast path of canonical JSON: the same text as `jcs`, or no answer at all."""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.audit.event import jcs, jcs_fast

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1.0, 1e16, 1e21, 1e-7, 5e-324, 0.1, 123456789.125, 2.5e-5])
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=0x7F))
)
_key = st.text(max_size=6) | st.sampled_from(["a", "B", "é", "😀", "\uffff", "_"])
_json = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=5) | st.tuples(inner, inner) | st.dictionaries(_key, inner, max_size=5)
    ),
    max_leaves=30,
)


def _jcs_or_error(value: Any) -> str | None:
    try:
        return jcs(value)
    except (TypeError, ValueError):
        return None


@settings(max_examples=600, deadline=None)
@given(_json)
def test_fast_text_is_the_jcs_text_whenever_it_answers(value: Any) -> None:
    fast = jcs_fast(value)
    if fast is not None:
        assert fast == _jcs_or_error(value)


def test_a_decision_like_payload_takes_the_fast_path() -> None:
    payload = {
        "action": "read",
        "outcome": "allow",
        "latency_ms": 11.462,
        "risk": {"calls_last_minute": 3, "first_use": False, "drift": {"score": 0}},
        "reasons": [{"policy_id": "p", "message": "m"}],
        "input": {"context": {"task": {"remaining_seconds": 3599, "depth": 0}}},
    }
    assert jcs_fast(payload) == jcs(payload)


@pytest.mark.parametrize(
    "value",
    [
        {"x": math.nan},  # orjson writes null: the slow path must refuse it
        {"x": math.inf},
        {"x": 2**53 + 1},  # beyond I-JSON
        {"x": 1.0},  # JCS spells it 1
        {"x": 1e16},  # JCS spells it 10000000000000000
        {"é": 1, "z": 2},  # non-ASCII: key order by UTF-16 is JCS's
        {"x": "line\nbreak"},  # an escape: left to the exact encoder
        {"x": 'quote"'},
        {"x": None},  # null outside strings: NaN or None, cannot tell
        {1: "int key"},
        OrderedDict(a=1),  # a subclass: jcs writes it as its base type
    ],
)
def test_doubtful_values_get_no_fast_answer(value: Any) -> None:
    assert jcs_fast(value) is None


def test_enum_members_are_written_as_jcs_writes_them() -> None:
    class Colour(enum.StrEnum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    value = {"c": Colour.RED, "l": Level.HIGH}
    assert jcs(value) == '{"c":"red","l":3}'
    assert jcs_fast(value) in (None, jcs(value))

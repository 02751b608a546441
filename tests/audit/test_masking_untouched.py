"""`Masker.untouched` is sound: when it says a payload needs no masking, the walk agrees."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.audit.event import jcs_fast
from tether.audit.masking import MASKED_KEY, Masker
from tether.credentials.secrets import SecretScrubber

# Fragments that trigger (or nearly trigger) each built-in rule, in mixed case.
_TRIGGERS = [
    "Bearer abcdefghijkl",
    "bearer\tZZZZZZZZZZZZ",
    "eyJhbGciOi.eyJzdWIiOi.sig",
    "?token=abc",
    "&API_KEY=xyz",
    ";sig=1",
    "?x-amz-signature=9",
    "-----BEGIN RSA PRIVATE KEY-----\nMII",
    "password",
    "PassPhrase",
    "X-Api-Key",
    "authorization",
    "Cookie",
    "private-key",
    "credential_value",
    "raw_headers",
    "Headers",
    "registered-secret-1",
]
_word = st.sampled_from(_TRIGGERS) | st.text(alphabet="abcxyz?&;=-_ ", max_size=12)
_text = st.lists(_word, max_size=3).map(" ".join)
_value = st.recursive(
    _text | st.integers(-5, 5) | st.booleans(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=12,
)


def _masker(**kw: Any) -> Masker:
    m = Masker(**kw)
    m.register_secret("registered-secret-1")
    return m


@settings(max_examples=800, deadline=None)
@given(st.dictionaries(_text, _value, max_size=4))
def test_untouched_payloads_come_out_of_the_walk_unchanged(payload: dict[str, Any]) -> None:
    masker = _masker(paths=["request.body.card"])
    text = jcs_fast(payload)
    if text is not None and masker.untouched(text):
        assert MASKED_KEY not in masker("decision", payload)
        assert masker("decision", payload) == payload


@pytest.mark.parametrize("trigger", _TRIGGERS)
def test_every_rule_trigger_sends_the_payload_through_the_walk(trigger: str) -> None:
    masker = _masker()
    for payload in ({"note": trigger}, {trigger: "value"}):
        text = jcs_fast(payload)
        if text is None:
            continue  # an escape in the text: the walk runs anyway
        if masker("decision", payload) != payload:
            assert not masker.untouched(text)


def test_a_path_rule_is_honoured() -> None:
    masker = _masker(paths=["request.body.card"])
    payload = {"request": {"body": {"card": "4111"}}}
    text = jcs_fast(payload)
    assert text is not None and not masker.untouched(text)
    assert masker.untouched(jcs_fast({"request": {"body": {"name": "x"}}}) or "")


def test_user_patterns_always_take_the_walk() -> None:
    # A user pattern may anchor on a string's start: it cannot be checked on the whole text.
    masker = _masker(patterns=[r"^acct-\d+$"])
    assert not masker.untouched('{"a":"b"}')
    assert masker("decision", {"a": "acct-12"})["a"] == "[masked]"


def test_deep_payloads_take_the_walk() -> None:
    deep: Any = "x"
    for _ in range(70):
        deep = [deep]
    text = jcs_fast({"d": deep})
    assert text is not None and not _masker().untouched(text)


class _Store:
    def __init__(self, values: list[str]) -> None:
        self.values = values

    def _values(self) -> list[str]:
        return self.values

    def mask(self, _t: str, payload: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        return payload


def test_a_stored_secret_in_the_payload_takes_the_walk() -> None:
    scrub = SecretScrubber(_Store(["sk-live-abcdef"]))  # type: ignore[arg-type]
    assert not scrub.untouched('{"h":"x sk-live-abcdef y"}')
    assert scrub.untouched('{"h":"nothing here"}')

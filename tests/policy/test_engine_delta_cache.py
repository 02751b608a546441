"""The engine keeps the entities of a repeated call; a new catalog never sees the old ones."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from tether.catalog import Catalog, parse_catalog
from tether.model import Outcome
from tether.policy import PolicyEngine
from tether.policy import engine as engine_module

from .conftest import TINY_CATALOG, make_request

Make = Callable[[dict[str, str]], PolicyEngine]

LOW_ONLY = '@id("low")\npermit (principal, action, resource) when { resource.sensitivity <= 1 };\n'


def test_a_repeated_call_reuses_its_entities(engine_for: Make, catalog: Catalog) -> None:
    engine = engine_for({"p.cedar": LOW_ONLY})
    for _ in range(3):
        assert engine.decide(make_request(catalog, arguments={"ticket": "T-1"})).outcome is Outcome.ALLOW
    assert len(engine._state.with_delta._items) == 1
    engine.decide(make_request(catalog, arguments={"ticket": "T-2"}))
    assert len(engine._state.with_delta._items) == 2


def test_stale_catalog_entities_are_not_served_after_a_catalog_change(
    engine_for: Make, catalog: Catalog
) -> None:
    # The same call before and after the catalog raises the service's sensitivity: a cache
    # that outlived the catalog would keep answering allow from the old attributes.
    engine = engine_for({"p.cedar": LOW_ONLY})
    assert engine.decide(make_request(catalog, arguments={"ticket": "T-1"})).outcome is Outcome.ALLOW
    raised = copy.deepcopy(TINY_CATALOG)
    raised["services"][0]["sensitivity"] = 3  # type: ignore[index]
    new_catalog = parse_catalog(raised)
    engine.set_catalog(new_catalog)
    after = engine.decide(make_request(new_catalog, arguments={"ticket": "T-1"}))
    assert (after.outcome, after.code) == (Outcome.DENY, "no_permit")


def test_a_policy_reload_keeps_deciding_over_the_current_catalog(
    engine_for: Make, catalog: Catalog, write_policies: Callable[..., object]
) -> None:
    engine = engine_for({"p.cedar": LOW_ONLY})
    engine.decide(make_request(catalog, arguments={"ticket": "T-1"}))
    engine.reload(write_policies({"p.cedar": '@id("none")\nforbid (principal, action, resource);\n'}))  # type: ignore[arg-type]
    assert engine.decide(make_request(catalog, arguments={"ticket": "T-1"})).outcome is Outcome.DENY


def test_the_cache_is_bounded(engine_for: Make, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "_DELTA_CACHE_MAX", 2)
    engine = engine_for({"p.cedar": LOW_ONLY})
    engine.set_catalog(catalog)  # a fresh cache under the patched bound
    for i in range(5):
        engine.decide(make_request(catalog, arguments={"ticket": f"T-{i}"}))
    assert len(engine._state.with_delta._items) == 2


def test_the_bound_shrinks_with_the_catalog() -> None:
    assert engine_module._DeltaCache(64 * 1024 * 1024).limit == 0  # a huge catalog: no copies kept
    assert engine_module._DeltaCache(3_000).limit == engine_module._DELTA_CACHE_MAX

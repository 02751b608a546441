"""Audit fixtures (helpers live in ``helpers.py``)."""

from __future__ import annotations

import pytest

from tether.runtime import Runtime

from .helpers import Tree, build_tree


@pytest.fixture
def tree(runtime: Runtime) -> Tree:
    """A three-level delegation tree with decisions, an approval, credentials and calls."""
    return build_tree(runtime)

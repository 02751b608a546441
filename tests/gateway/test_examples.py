"""The shipped gateway examples load: MCP catalog snippet and policies."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tether.catalog import load_catalog
from tether.policy.engine import PolicyEngine
from tether.runtime import init_state_dir

EXAMPLES = Path(__file__).parents[2] / "examples" / "gateway" / "mcp"


def test_mcp_example_catalog_and_policies_load(tmp_path):
    """The catalog snippet merges into the example catalog and the policies validate against it."""
    init_state_dir(tmp_path)
    catalog = yaml.safe_load((tmp_path / "catalog.yaml").read_text())
    snippet = yaml.safe_load((EXAMPLES / "catalog-snippet.yaml").read_text())
    for key in ("services", "tools"):
        catalog[key] += snippet[key]
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    shutil.copy(EXAMPLES / "50-mcp.cedar", tmp_path / "policies")
    engine = PolicyEngine.from_paths(tmp_path / "policies", load_catalog(tmp_path / "catalog.yaml"))
    assert "50-mcp.cedar" in engine.bundle.files

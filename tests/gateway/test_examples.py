"""The shipped gateway examples load and their policy cases pass: MCP catalog snippet,
policies, and the folder-rule attacks (traversal, encoding, symlink, list packing)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tether.catalog import load_catalog
from tether.policy import evaluate_cases, load_cases
from tether.policy.engine import PolicyEngine
from tether.runtime import init_state_dir

EXAMPLES = Path(__file__).parents[2] / "examples" / "gateway" / "mcp"


def example_engine(tmp_path: Path) -> tuple[PolicyEngine, object]:
    init_state_dir(tmp_path)
    catalog = yaml.safe_load((tmp_path / "catalog.yaml").read_text())
    snippet = yaml.safe_load((EXAMPLES / "catalog-snippet.yaml").read_text())
    for key in ("services", "tools"):
        catalog[key] += snippet[key]
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    shutil.copy(EXAMPLES / "50-mcp.cedar", tmp_path / "policies")
    loaded = load_catalog(tmp_path / "catalog.yaml")
    return PolicyEngine.from_paths(tmp_path / "policies", loaded), loaded


def test_mcp_example_catalog_and_policies_load(tmp_path):
    """The catalog snippet merges into the example catalog and the policies validate against it."""
    engine, _ = example_engine(tmp_path)
    assert "50-mcp.cedar" in engine.bundle.files


def test_mcp_example_policy_cases_pass(tmp_path):
    """Every shipped MCP case passes, the attack cases among them expected to deny."""
    engine, catalog = example_engine(tmp_path)
    report = evaluate_cases(engine, catalog, load_cases(EXAMPLES / "policy_tests"))
    assert report.passed, "\n".join(r.describe() for r in report.failures)
    by_name = {r.case.name: r.result for r in report.results}
    traversal = by_name["dot-dot traversal out of /srv/repos (the old example allowed it)"]
    assert traversal.code == "path_outside_roots"
    assert by_name["NUL byte in a path"].code == "argument_invalid"
    assert by_name['missing repo_path is not "no rule applies"'].code == "argument_missing"
    assert by_name["list packing, one public and one secret file"].code == "policy_forbid"

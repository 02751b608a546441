"""`tether gateway …` and `tether mcp tools …` from the command line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tether.cli import main


def test_gateway_help_lists_both_gateways():
    """`tether gateway --help` names the http and mcp gateways."""
    r = CliRunner().invoke(main, ["gateway", "--help"])
    assert r.exit_code == 0 and "http" in r.output and "mcp" in r.output


def test_gateway_http_bad_routes_file_fails_with_code(tmp_path):
    """An invalid routes file stops the gateway before it listens, with `config_invalid`."""
    bad = tmp_path / "routes.toml"
    bad.write_text('[[routes]]\nprefix = "nope"\n')
    r = CliRunner().invoke(main, ["gateway", "http", "--config", str(bad)])
    assert r.exit_code == 1 and "config_invalid" in r.output


def test_gateway_mcp_stdio_requires_task_token(monkeypatch):
    """Over stdio the MCP gateway refuses to start without the agent's task token."""
    monkeypatch.delenv("TETHER_TASK_TOKEN", raising=False)
    r = CliRunner().invoke(main, ["gateway", "mcp", "--server", "time", "--upstream-cmd", "true"])
    assert r.exit_code == 1 and "missing_token" in r.output


def test_mcp_tools_list_without_broker_exit_code(tmp_path):
    """`tether mcp tools list` against a state dir with no broker running exits 3."""
    r = CliRunner().invoke(main, ["mcp", "tools", "list", "--state-dir", str(tmp_path), "--json"])
    assert r.exit_code == 3 and json.loads(r.output)["error"]["code"] == "broker_not_running"

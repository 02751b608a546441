"""docs/configuration.md is generated from the settings model and must stay current."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from tether import config_docs
from tether.config import Settings, load_settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_page_is_current():
    """The committed page equals the generator's output (regenerate: see the page's header)."""
    assert PAGE.read_text() == config_docs.render(), (
        "docs/configuration.md is stale: run `python -m tether.config_docs > docs/configuration.md`"
    )


def test_every_top_level_setting_is_documented():
    """Each field of Settings (but the state directory) appears as a key on the page."""
    documented = {k.name.split(".")[0].split("[")[0] for k in config_docs.settings_keys()}
    assert documented == {f.name for f in fields(Settings)} - {"state_dir"}


def test_documented_environment_variables_set_their_key(tmp_path):
    """A documented variable really sets its key: each scalar's env name is read back."""
    checked = 0
    for key in config_docs.settings_keys():
        if key.type != "integer" or not key.env.startswith("`TETHER_"):
            continue
        var = key.env.strip("`")
        default = int(key.default.strip("`"))
        value = str(default + 7)
        s = load_settings(tmp_path, environ={var: value})
        node: object = s
        for part in key.name.split("."):
            node = getattr(node, part)
        assert node == default + 7, key.name
        checked += 1
    assert checked > 20


def test_check_mode_reports_a_stale_page(tmp_path):
    """`--check` exits 1 on a page that differs from the model, 0 on a current one."""
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    assert config_docs.main(["--check", str(stale)]) == 1
    assert config_docs.main(["--check", str(PAGE)]) == 0

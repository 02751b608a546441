"""Settings are validated once, with errors that name the field."""

from __future__ import annotations

import pytest

from tether.config import load_settings
from tether.errors import ConfigError


def _write(tmp_path, text):
    (tmp_path / "tether.toml").write_text(text)
    return tmp_path


def test_defaults_without_a_file(tmp_path):
    """With no file and no environment, defaults apply and derived values follow them."""
    s = load_settings(tmp_path, environ={})
    assert s.store_url == f"sqlite:///{tmp_path / 'tether.db'}"
    assert s.broker_audience == "spiffe://tether.local/tether"
    assert s.policy_path == tmp_path / "policies"


def test_environment_overrides_file(tmp_path):
    """TETHER_* variables win over the file, nested keys with a double underscore."""
    _write(tmp_path, 'environment = "dev"\n[tasks]\nmax_ttl_seconds = 100\n')
    s = load_settings(tmp_path, environ={"TETHER_ENVIRONMENT": "prod", "TETHER_TASKS__MAX_TTL_SECONDS": "50"})
    assert (s.environment, s.tasks.max_ttl_seconds) == ("prod", 50)


@pytest.mark.parametrize(
    "text, field",
    [
        ('listen = "nope"\n', "listen"),
        ('trust_domain = "Bad Domain!"\n', "trust_domain"),
        ('[tasks]\nmax_ttl_seconds = "soon"\n', "tasks.max_ttl_seconds"),
        ("[tasks]\nmax_ttl_seconds = 0\n", "tasks.max_ttl_seconds"),
        ("[limits]\njwt_leeway_seconds = 3600\n", "limits.jwt_leeway_seconds"),
        ('store = "mysql://x"\n', "store"),
        ("surprise = 1\n", "surprise"),
        ('[[trust_bundles]]\ntrust_domain = "a.example"\n', "trust_bundles[0]"),
        (
            '[[trust_bundles]]\ntrust_domain = "a.example"\njwks_file = "a"\njwks_url = "https://b"\n',
            "trust_bundles[0]",
        ),
    ],
)
def test_invalid_settings_name_the_field(tmp_path, text, field):
    """Each invalid value is refused with `config_invalid` and the field it concerns."""
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path, environ={})
    assert exc.value.code == "config_invalid" and field in exc.value.message


def test_toml_syntax_error_names_the_file(tmp_path):
    """A broken TOML file is refused naming the file."""
    _write(tmp_path, "listen = \n")
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path, environ={})
    assert "tether.toml" in exc.value.message


def test_unrelated_tether_variables_are_ignored(tmp_path):
    """TETHER_* variables that name no setting (state dir, task token, test switches) are not settings."""
    s = load_settings(
        tmp_path,
        environ={
            "TETHER_TEST_PG": "1",
            "TETHER_TASK_TOKEN": "x",
            "TETHER_MASTER_KEY": "y",
            "TETHER_LISTEN": "127.0.0.1:9",
        },
    )
    assert s.listen == "127.0.0.1:9"

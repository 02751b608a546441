"""deploy/systemd/tether.service: valid for systemd, hardened, and its settings exist.

`systemd-analyze verify` and `systemd-analyze security --offline` read the unit file
without a running systemd (this machine has none as PID 1), so they run here and in CI
(`make test` installs them: scripts/ensure-systemd-tools). The unit is not started: that
needs a booted systemd.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from ._files import DEPLOY, TEST_MASTER_KEY, settings_from_env, tool_required, unknown_tether_env

UNIT = DEPLOY / "systemd" / "tether.service"
INSTALLED_TETHER = "/opt/tether/bin/tether"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value (systemd keys may repeat, e.g. ``SystemCallFilter``)."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out[section][key.strip()].append(value.strip())
    return out


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        if tool_required():
            pytest.fail("systemd-analyze is missing: run scripts/ensure-systemd-tools (make test does)")
        pytest.skip("systemd-analyze not installed (scripts/ensure-systemd-tools installs it)")
    return exe


def _local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's tether (verify checks it exists)."""
    here = str(Path(sys.executable).parent / "tether")
    unit = tmp_path / "tether.service"
    unit.write_text((text or UNIT.read_text()).replace(INSTALLED_TETHER, here))
    return unit


def test_unit_passes_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` accepts the unit with no warning (unknown keys warn)."""
    exe = _analyze()
    r = subprocess.run(
        [exe, "verify", str(_local_copy(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_verify_refuses_a_unit_whose_command_is_missing(tmp_path):
    """The verify check can fail: a unit whose ExecStart does not exist is refused."""
    exe = _analyze()
    bad = tmp_path / "bad.service"
    bad.write_text(UNIT.read_text().replace(INSTALLED_TETHER, str(tmp_path / "no-such-tether")))
    r = subprocess.run([exe, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not executable" in r.stderr


def test_unit_exposure_is_in_the_ok_band(tmp_path):
    """`systemd-analyze security --offline` rates the unit's exposure at most 2.0 ("OK")."""
    exe = _analyze()
    r = subprocess.run(
        [exe, "security", "--offline=yes", "--threshold=20", str(_local_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def test_unit_sets_the_hardening_options():
    """The unit runs as a dynamic user with no privileges and a read-only system."""
    svc = parse_unit(UNIT.read_text())["Service"]
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "StateDirectory": "tether",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert svc[key] == [value], key
    assert "@system-service" in svc["SystemCallFilter"]
    assert svc["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # Attestation reads other users' /proc/<pid> and their real uids: neither may be hidden.
    assert "ProtectProc" not in svc and "PrivateUsers" not in svc


def test_unit_serves_from_its_state_directory_and_reloads_on_sighup():
    """ExecStart serves /var/lib/tether (the StateDirectory); reload sends SIGHUP."""
    svc = parse_unit(UNIT.read_text())["Service"]
    assert svc["ExecStart"] == [f"{INSTALLED_TETHER} serve --state-dir /var/lib/tether"]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_unit_environment_names_real_settings(tmp_path):
    """Every TETHER_* variable the unit sets is a setting, and together they validate."""
    svc = parse_unit(UNIT.read_text())["Service"]
    env = dict(v.split("=", 1) for v in svc["Environment"])
    assert unknown_tether_env(env) == []
    s = settings_from_env({**env, "TETHER_MASTER_KEY": TEST_MASTER_KEY}, tmp_path)
    assert str(s.policy_path) == "/etc/tether/policies"
    assert str(s.catalog_path) == "/etc/tether/catalog.yaml"
    assert s.identity.workload_socket == "/run/tether/workload.sock"

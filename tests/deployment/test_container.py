"""deploy/container/: the image build file and its compose file.

There is no container daemon here, so the image is not built. The Dockerfile is parsed by
BuildKit's own parser (the `dockerfile` package) and checked: non-root user, state on a
volume, a healthcheck on /readyz. Then the image's configuration is exercised without the
image: a broker started with the Dockerfile's ENV, ENTRYPOINT and CMD (paths moved into a
temporary directory) must pass the Dockerfile's own HEALTHCHECK command.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dockerfile
import yaml

from ._files import DEPLOY, ROOT, unknown_tether_env

BUILD = DEPLOY / "container" / "Dockerfile"
COMPOSE = DEPLOY / "container" / "compose.yaml"
STATE = "/var/lib/tether"


def _final_stage() -> list[dockerfile.Command]:
    cmds = list(dockerfile.parse_file(str(BUILD)))
    last_from = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    return cmds[last_from:]


def _one(stage: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    found = [c for c in stage if c.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd}, found {len(found)}"
    return found[0]


def _env(stage: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in stage:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    return env


def test_image_runs_as_a_fixed_unprivileged_user():
    """The final stage's USER is a numeric, non-zero uid:gid (runAsNonRoot can check it)."""
    user = _one(_final_stage(), "USER").value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0


def test_image_keeps_state_on_a_volume_and_serves_it():
    """The state directory is a VOLUME, the working dir, TETHER_STATE_DIR and the served dir."""
    stage = _final_stage()
    assert _one(stage, "VOLUME").value == (STATE,)
    assert _env(stage)["TETHER_STATE_DIR"] == STATE
    entry = _one(stage, "ENTRYPOINT")
    cmd = _one(stage, "CMD")
    assert entry.json and cmd.json  # exec form: the broker is PID 1 and gets SIGTERM itself
    assert (*entry.value, *cmd.value) == ("/opt/tether/bin/tether", "serve", "--state-dir", STATE)


def test_image_healthcheck_asks_readyz():
    """HEALTHCHECK runs (exec form) a request to /readyz on the listening port."""
    stage = _final_stage()
    hc = _one(stage, "HEALTHCHECK")
    assert hc.json and hc.value[0] == "CMD"
    port = _env(stage)["TETHER_LISTEN"].rpartition(":")[2]
    assert f"127.0.0.1:{port}/readyz" in hc.value[-1]
    assert _one(stage, "EXPOSE").value == (port,)


def test_image_sources_are_pinned_and_exist():
    """Base images name a tag (never `latest`); every COPY source exists in the context."""
    cmds = list(dockerfile.parse_file(str(BUILD)))
    for c in cmds:
        if c.cmd == "FROM":
            image = c.value[0]
            assert ":" in image and not image.endswith(":latest"), image
        if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags):
            for src in c.value[:-1]:
                assert (ROOT / src).exists(), src
        assert c.cmd != "ADD", "ADD fetches URLs and unpacks archives: use COPY"


def test_image_environment_names_real_settings():
    """Every TETHER_* variable the image sets is a setting."""
    assert unknown_tether_env(_env(_final_stage())) == []


def test_compose_runs_read_only_with_state_on_a_volume():
    """compose.yaml: read-only root, the image's user, no capabilities, a state volume."""
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    svc = doc["services"]["tether"]
    assert svc["read_only"] is True
    assert svc["user"] == _one(_final_stage(), "USER").value[0]
    assert svc["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in svc["security_opt"]
    volume, _, target = svc["volumes"][0].partition(":")
    assert target == STATE and volume in doc["volumes"]
    assert svc["build"]["dockerfile"] == str(BUILD.relative_to(ROOT))
    assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT
    assert "TETHER_MASTER_KEY" in svc["environment"]  # kept off the state volume


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_broker_configured_like_the_image_passes_the_image_healthcheck(tmp_path):
    """The image's ENV + ENTRYPOINT + CMD start a broker whose HEALTHCHECK command passes."""
    stage = _final_stage()
    port = _free_port()
    # The image's filesystem, moved under tmp_path: /etc/tether from the COPY lines, the
    # state volume empty (0700, as the image creates it), /opt/tether = this checkout's venv.
    etc = tmp_path / "etc" / "tether"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "src/tether/examples/catalog.yaml", etc / "catalog.yaml")
    shutil.copytree(ROOT / "src/tether/examples/policies", etc / "policies")
    state = tmp_path / "var" / "lib" / "tether"
    state.mkdir(parents=True, mode=0o700)
    venv_bin = str(Path(sys.executable).parent)

    def move(value: str) -> str:
        return (
            value.replace("/etc/tether", str(etc))
            .replace(STATE, str(state))
            .replace("/opt/tether/bin", venv_bin)
            .replace(":8421", f":{port}")
            .replace("0.0.0.0:", "127.0.0.1:")
        )

    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update({k: move(v).replace("$PATH", env.get("PATH", "")) for k, v in _env(stage).items()})
    argv = [move(a) for a in (*_one(stage, "ENTRYPOINT").value, *_one(stage, "CMD").value)]
    check = [move(a) for a in _one(stage, "HEALTHCHECK").value[1:]]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            if subprocess.run(check, capture_output=True, timeout=10).returncode == 0:
                break
            assert time.monotonic() < deadline, "the healthcheck never passed"
            time.sleep(0.2)  # bounded poll: another process is starting
        assert (state / "tether.db").exists() and (state / "master.key").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == 0

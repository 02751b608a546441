"""CI cannot go green by accident: a crashed xdist worker, an empty run or a failing `make` fails it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(source)
    # An empty ini file keeps the repo's pyproject (addopts, filterwarnings) out of the probe.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    # Only xdist: the probe needs no other plugin, and importing every installed one
    # (schemathesis, langsmith, …) in the runner and each worker costs seconds apiece.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "xdist", *args, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_crashed_xdist_worker_fails_the_run(tmp_path):
    """A worker that dies mid-test (os._exit) makes pytest exit non-zero and name the crash."""
    r = _pytest(
        tmp_path,
        "import os\n\ndef test_ok():\n    pass\n\ndef test_dies():\n    os._exit(3)\n",
        "-n",
        "2",
        "--max-worker-restart=0",
    )
    assert r.returncode != 0, r.stdout
    assert "crashed" in r.stdout, r.stdout


def test_run_that_collects_nothing_exits_5(tmp_path):
    """A run with no tests exits 5 (not 0), so `make test` fails on it."""
    r = _pytest(tmp_path, "def helper():\n    pass\n", "-n", "2")
    assert r.returncode == 5, r.stdout


@pytest.mark.parametrize("code", [1, 2, 5])
def test_ci_run_fails_when_make_test_fails(tmp_path, code):
    """`.ci/run` exits non-zero and never prints "CI passed" when `make test` exits 1, 2 or 5."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "make"
    stub.write_text(f'#!/bin/sh\necho "make $*" >> "{tmp_path}/calls"\nexit {code}\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "CI": "true"}
    r = subprocess.run(
        ["bash", str(REPO / ".ci" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert r.returncode != 0
    assert "CI passed" not in r.stdout + r.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["make test"]  # stopped at once


def test_make_test_runs_the_suite_on_xdist_workers():
    """`make test` passes `-n TEST_WORKERS` (pytest-xdist) and pytest-xdist is a test dependency."""
    if shutil.which("make") is None:
        pytest.fail("make is required to run the suite")
    # The defaults, not whatever the make that runs this suite was given.
    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TEST_WORKERS")
    }
    r = subprocess.run(
        ["make", "-n", "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    line = next(ln for ln in r.stdout.splitlines() if "-m pytest" in ln)
    assert re.search(r" -n \d+ ", line) and "--dist loadscope" in line, line
    assert "pytest-xdist" in (REPO / "pyproject.toml").read_text()

"""The client installs and works alone: the built wheel, no extras, against a real broker.

A fresh virtual environment (no system site-packages) gets ``tether`` from a wheel built
from this tree, resolved by pip with ``--no-index`` from a folder that holds only the
wheels of the base requirements' closure (repacked from this test environment, so no
network is needed). pip fails if the base install asks for anything else. A script there
opens a task on a real broker process (``tether up`` from this environment), runs a
guarded call with DPoP, is denied out of scope, and reports every module it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.testing import TestTrustDomain, broker_process

try:
    from . import _wheels  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import _wheels  # type: ignore[import-not-found,no-redef,unused-ignore]

REPO = Path(__file__).resolve().parents[2]
#: Modules of the broker's dependencies: none may be installed, or imported by the client.
BROKER_ONLY = (
    "sqlalchemy",
    "cedarpy",
    "uvicorn",
    "starlette",
    "alembic",
    "psycopg",
    "click",
    "rich",
    "yaml",
    "jinja2",
    "mcp",
    "pydantic",
    "orjson",
)
#: What the client may import of the rest of the package (stdlib-only kernel modules).
CLIENT_MAY_IMPORT = ("tether.sdk", "tether.errors", "tether.model", "tether.linesocket")

SCRIPT = r"""
import base64, json, sys
from tether.sdk import Client, Denied, guard

url, audience, svid = sys.argv[1:4]

@guard(action="read", resource="tickets.queue")
def read_queue():
    return "queue read"

@guard(action="read", resource="crm")
def read_crm():
    return "crm read"

with Client(url, svid=svid, audience=audience, dpop=True) as client:
    with client.task("support.triage", [("read", "tickets.queue")], ttl=60) as task:
        result = read_queue()
        try:
            read_crm()
            denied = None
        except Denied as exc:
            denied = exc.code
print(json.dumps({
    "result": result,
    "denied": denied,
    "claims": json.loads(base64.urlsafe_b64decode(task.token.split(".")[1] + "==")),
    "modules": sorted({m.split(".")[0] for m in sys.modules}),
    "tether": sorted(m for m in sys.modules if m == "tether" or m.startswith("tether.")),
}))
"""


def _pip(*args: str, python: Path | None = None, timeout: float = 300) -> str:
    """This environment's pip, acting on ``python``'s environment when given."""
    target = ["--python", str(python)] if python else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", *target, "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PIP_CONSTRAINT": "", "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": ""},
    )
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of a fresh venv holding the client alone (``pip install tether``)."""
    root = tmp_path_factory.mktemp("client-only")
    wheels = root / "wheels"
    tether_wheel = _wheels.build_project_wheel(REPO, root / "build", wheels)
    for dist in _wheels.closure(_wheels.base_requirements(REPO)):
        _wheels.repack(dist, wheels)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    _pip("install", "--no-index", "--find-links", str(wheels), str(tether_wheel), python=python)
    yield python


def test_client_install_pulls_no_broker_dependency(client_python: Path):
    """`pip install tether` resolves to httpx, cryptography and their own requirements only."""
    listed = json.loads(_pip("list", "--format=json", python=client_python))
    names = {p["name"].lower().replace("_", "-") for p in listed}
    assert {"tether", "httpx", "cryptography"} <= names
    broker = {"sqlalchemy", "cedarpy", "uvicorn", "starlette", "alembic", "psycopg", "click", "mcp"}
    assert names & broker == set()
    assert names & {"pydantic", "rich", "pyyaml", "jinja2", "orjson"} == set()


def test_client_alone_runs_a_guarded_call_against_a_real_broker(client_python: Path, tmp_path: Path):
    """Open a task, allow a guarded call with DPoP, deny another — importing nothing of the broker."""
    domain = TestTrustDomain("support.example")
    with broker_process(tmp_path / "state", domain) as broker:
        svid = domain.svid(domain.spiffe_id("orchestrator"), broker.audience)
        done = subprocess.run(
            [str(client_python), "-c", SCRIPT, broker.url, broker.audience, svid],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,  # not the repo: `tether` must come from the venv's site-packages
        )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["result"] == "queue read"
    assert report["denied"] == "out_of_scope"
    assert report["claims"]["cnf"]["jkt"]  # the task token is bound to the client's DPoP key
    assert [m for m in BROKER_ONLY if m in report["modules"]] == []
    outside = [m for m in report["tether"] if m != "tether" and not m.startswith(CLIENT_MAY_IMPORT)]
    assert outside == []


def test_sdk_never_imports_the_broker_even_where_the_broker_is_installed():
    """In this full environment, importing every client module loads no broker dependency."""
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import tether.sdk, tether.sdk.integrations as integ\n"
        "for pkg in (tether.sdk, integ):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO, check=True
    )
    loaded = json.loads(done.stdout)
    roots = {m.split(".")[0] for m in loaded}
    # httpx itself imports click and rich when they are installed (its command line).
    assert [m for m in BROKER_ONLY if m in roots and m not in ("click", "rich")] == []
    tether_outside = [m for m in loaded if m.startswith("tether.") and not m.startswith(CLIENT_MAY_IMPORT)]
    assert tether_outside == []


def test_tether_command_without_the_broker_says_what_to_install(client_python: Path):
    """In a client-only install `tether` says how to get the broker instead of a traceback."""
    done = subprocess.run(
        [str(client_python.parent / "tether"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "pip install 'tether[broker]'" in done.stderr
    assert "Traceback" not in done.stderr

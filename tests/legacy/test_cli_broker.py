"""`tether secrets scan → import → inventory → rotate` as an operator runs them, against a real
broker process over the admin socket."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

from tether.testing import TestTrustDomain, broker_process

from .fixture_repo import git, write

TETHER = str(Path(sys.executable).parent / "tether")
TOKEN = "xoxb-210987654321-3210987654321-" + "Zx8cVb7nMl6kJh5gFd4sAq3w"
ROUTES = (
    '[[routes]]\nprefix = "/slack"\nupstream = "http://127.0.0.1:9"\nservice = "slack-external"\n'
    '  [[routes.rules]]\n  method = "POST"\n  path = "/post"\n  action = "send"\n'
    '  resource = "slack-external.post"\n'
)


def _run(
    state: Path, *args: str, stdin: str | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([TETHER, *args, "--state-dir", str(state)], capture_output=True, text=True,
                       timeout=120, input=stdin)  # fmt: skip
    assert (r.returncode == 0) == ok, f"{args}: {r.stdout}\n{r.stderr}"
    return r


def test_scan_import_inventory_rotate_through_the_cli(tmp_path):
    """The runbook's commands work end to end and never print the secret."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo, "bot.py", f'SLACK_BOT_TOKEN = "{TOKEN}"\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bot")
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    hook = tmp_path / "rotate"
    hook.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.stdin.readline()
        if sys.argv[1] == "new":
            print("xoxb-rotated-" + "9" * 20)
        """))  # fmt: skip
    hook.chmod(hook.stat().st_mode | stat.S_IEXEC)
    with broker_process(tmp_path / "state", TestTrustDomain("support.example")) as b:
        state = b.state_dir
        scanned = _run(state, "secrets", "scan", str(repo), "--json", ok=False).stdout
        (finding,) = json.loads(scanned)["findings"]
        fp = finding["fingerprint"]
        args = ["--service", "slack-external", "--routes", str(routes), "--header", "X-Api-Key"]
        imported = _run(state, "secrets", "import", fp, "--from", str(repo), *args,
                        "--rotate-command", str(hook)).stdout  # fmt: skip
        assert "bot.py:1" in imported and "route /slack" in imported
        inv = json.loads(_run(state, "secrets", "inventory", "--json").stdout)
        (row,) = [r for r in inv if r["name"] == "slack-external"]
        assert (row["fingerprint"], row["exposures_live"], row["rotation"]) == (fp, 1, "command")
        rotated = json.loads(_run(state, "secrets", "rotate", "slack-external", "--json").stdout)
        assert rotated["status"] == "ok" and rotated["fingerprint"] != fp
        listed = _run(state, "secrets", "list").stdout
        wrong = _run(state, "secrets", "import", fp, "--from", str(repo), "--service", "crm",
                     "--routes", str(routes), "--json", ok=False).stdout  # fmt: skip
        assert json.loads(wrong)["error"]["code"] == "no_route_for_service"
    for out in (scanned, imported, json.dumps(inv), listed, wrong):
        assert TOKEN not in out and "xoxb-rotated" not in out

"""`tether secrets scan` on real git repositories built by the test (see fixture_repo.py)."""

from __future__ import annotations

import json
import logging
import os

import pytest
from click.testing import CliRunner

from tether.cli import main
from tether.legacy.scan import scan, value_of

from .fixture_repo import build, git, write

HOSTS = {"tickets.corp.test": "tickets"}
SERVICES = ["tickets", "crm", "billing", "slack-external", "email"]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("scan") / "repo"
    return repo, build(repo)


def test_planted_secrets_found_and_lookalikes_not(fixture):
    """Every planted secret (14, of 14 kinds) is found, and none of the look-alikes is."""
    repo, planted = fixture
    result = scan([repo], hosts=HOSTS, services=SERVICES)
    want = {p.fingerprint: p for p in planted}
    got = {f.fingerprint for f in result.findings}
    recall = len(got & set(want)) / len(want)
    false_pos = [f for f in result.findings if f.fingerprint not in want]
    print(f"recall {recall:.2f} ({len(got & set(want))}/{len(want)}), false positives {len(false_pos)}")
    assert len({p.kind for p in planted}) >= 10
    assert recall == 1.0, [p.kind for p in planted if p.fingerprint not in got]
    assert false_pos == []


def test_findings_say_where_when_and_whether_live(fixture):
    """Deleted files are found in history with commit and author date; live ones in the tree."""
    repo, planted = fixture
    by_fp = {f.fingerprint: f for f in scan([repo], hosts=HOSTS, services=SERVICES).findings}
    for p in planted:
        f = by_fp[p.fingerprint]
        assert (f.kind, f.path, f.live) == (p.kind, p.path, p.live)
        if p.live:
            assert f.source == "tree" and f.commit is None and f.line >= 1
        else:
            assert f.source == "history" and len(f.commit or "") == 40
            assert f.authored_at == 1_600_000_000.0
        assert f.first_seen <= 1_600_000_000 + 86400 * 30  # committed years ago, not "now"
    aws = next(p for p in planted if p.kind == "AWS Access Key")
    assert by_fp[aws.fingerprint].view()["location"] == "src/settings.py:1"


def test_service_attribution_from_urls_and_names(fixture):
    """A credential in a known service's URL names that service; `SLACK`-ish keys name Slack."""
    repo, planted = fixture
    by_fp = {f.fingerprint: f for f in scan([repo], hosts=HOSTS, services=SERVICES).findings}
    svc = {p.kind: by_fp[p.fingerprint].service for p in planted}
    assert svc["Service URL Credential"] == "tickets"
    assert svc["Slack Token"] == "slack-external"


def test_secret_values_never_in_json_sarif_or_logs(fixture, tmp_path, caplog):
    """Neither stdout (table, JSON, SARIF), a SARIF file, a baseline nor logs carry a value."""
    repo, planted = fixture
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    outs = []
    for args in ([], ["--json"], ["--sarif", "-"]):
        r = runner.invoke(main, ["secrets", "scan", str(repo), "--state-dir", str(tmp_path), *args])
        assert r.exit_code == 1, r.output
        outs.append(r.output)
    sarif, base = str(tmp_path / "o.sarif"), str(tmp_path / "b.json")
    r = runner.invoke(main, ["secrets", "scan", str(repo), "--state-dir", str(tmp_path), "--json",
                             "--sarif", sarif, "--write-baseline", base])  # fmt: skip
    outs += [r.output, (tmp_path / "o.sarif").read_text(), (tmp_path / "b.json").read_text(), caplog.text]
    assert json.loads(outs[1])["findings"]
    for p in planted:
        for v in {p.value, *p.value.splitlines()[1:2]}:
            assert all(v not in o for o in outs), p.kind


def test_sarif_is_2_1_0_with_locations_and_fingerprints(fixture):
    """SARIF output: version 2.1.0, one rule per kind, results with region and fingerprint."""
    repo, _ = fixture
    r = CliRunner().invoke(main, ["secrets", "scan", str(repo), "--sarif", "-", "--fail-on", "none"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-2.1.0.json")
    (run,) = doc["runs"]
    rules = {x["id"] for x in run["tool"]["driver"]["rules"]}
    assert len(run["results"]) >= 13
    for res in run["results"]:
        assert res["ruleId"] in rules
        assert run["tool"]["driver"]["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["region"]["startLine"] >= 1 and loc["artifactLocation"]["uri"]
        assert res["partialFingerprints"]["tetherSecretFingerprint/v1"].startswith("fp_")


def test_baseline_then_fail_on_new(tmp_path):
    """Acknowledged findings pass `--fail-on new`; a newly committed secret fails it, alone."""
    repo = tmp_path / "repo"
    build(repo)
    base = tmp_path / "baseline.json"
    cli = CliRunner()
    r = cli.invoke(main, ["secrets", "scan", str(repo), "--write-baseline", str(base), "--fail-on", "none"])
    assert r.exit_code == 0, r.output
    ok = cli.invoke(main, ["secrets", "scan", str(repo), "--baseline", str(base), "--fail-on", "new"])
    assert ok.exit_code == 0, ok.output
    write(repo, "src/late.py", 'GITHUB_TOKEN = "ghp_' + "Zq9" * 12 + '"\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "oops")
    bad = cli.invoke(
        main, ["secrets", "scan", str(repo), "--baseline", str(base), "--fail-on", "new", "--json"]
    )
    assert bad.exit_code == 1
    new = [f for f in json.loads(bad.output)["findings"] if f["new"]]
    assert [(f["path"], f["kind"]) for f in new] == [("src/late.py", "GitHub Token")]


def test_fail_on_new_without_baseline_is_an_error(tmp_path):
    """`--fail-on new` with no baseline is refused with a code, not treated as 'all new'."""
    r = CliRunner().invoke(main, ["secrets", "scan", str(tmp_path), "--fail-on", "new", "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["error"]["code"] == "baseline_missing"


def test_corrupt_baseline_names_the_file(tmp_path):
    """A baseline that is not one is a `baseline_invalid` error naming the file."""
    bad = tmp_path / "b.json"
    bad.write_text('{"version": 1, "findings": [{"fingerprint": 3}]}')
    r = CliRunner().invoke(main, ["secrets", "scan", str(tmp_path), "--baseline", str(bad), "--json"])
    err = json.loads(r.output)["error"]
    assert err["code"] == "baseline_invalid" and "b.json" in err["message"]


def test_binary_huge_symlink_loop_and_broken_git_objects_are_counted_skips(tmp_path):
    """Binary, too-large, symlink-loop files and a corrupt git object: skipped and counted."""
    repo = tmp_path / "repo"
    build(repo)
    (repo / "big.txt").write_text("x = 1\n" * 200_000)
    os.symlink("loop_b", repo / "loop_a")
    os.symlink("loop_a", repo / "loop_b")
    os.symlink(".", repo / "self_dir")  # a directory loop: never followed
    blob = git(repo, "rev-parse", "HEAD~1:Jenkinsfile")
    obj = repo / ".git" / "objects" / blob[:2] / blob[2:]
    obj.chmod(0o644)
    obj.write_bytes(b"not a zlib stream")
    result = scan([repo], max_bytes=1024 * 1024)
    by = result.skips.counts
    assert by["binary"] >= 1 and by["too_large"] == 1 and by["symlink_loop"] == 2
    assert by["git_history_unreadable"] == 1
    assert any(f.kind == "AWS Access Key" for f in result.findings)  # the rest was still scanned
    # (an unreadable-permissions file cannot be made here: the tests run as root)


def test_value_re_read_from_tree_and_history_location(fixture):
    """`value_of` re-reads a finding's secret from its file or its commit, by fingerprint."""
    repo, planted = fixture
    by_fp = {f.fingerprint: f for f in scan([repo], hosts=HOSTS, services=SERVICES).findings}
    for kind in ("Stripe Access Key", "SendGrid API Key", "PostgreSQL Password"):
        p = next(x for x in planted if x.kind == kind)
        f = by_fp[p.fingerprint]
        assert value_of(repo, f.path, f.line, f.fingerprint, f.commit) == p.value
    assert value_of(repo, ".env", 1, "fp_0000") is None


def test_process_environment_scanned_only_when_asked(tmp_path):
    """`--process-env PID` finds a token a running command was started with; PATHS alone do not."""
    import subprocess
    import sys

    token = "ghp_" + "Pk4" * 12
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                            env={**os.environ, "GITHUB_TOKEN": token})  # fmt: skip
    try:
        r = CliRunner().invoke(main, ["secrets", "scan", "--process-env", str(proc.pid), "--json"])
        assert r.exit_code == 1 and token not in r.output
        (f,) = json.loads(r.output)["findings"]
        assert f["kind"] == "GitHub Token" and f["path"].startswith(f"process:{proc.pid}:") and f["live"]
        clean = CliRunner().invoke(main, ["secrets", "scan", str(tmp_path), "--json"])
        assert clean.exit_code == 0 and json.loads(clean.output)["findings"] == []
    finally:
        proc.communicate(b"", timeout=10)

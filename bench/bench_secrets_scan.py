"""`tether secrets scan`: working-tree files per second and git commits per second.

The repository is the test fixture (tests/legacy/fixture_repo.py: 14 planted secrets in code,
config, CI and deleted files, plus look-alikes) with N extra commits and F extra source files
for volume. Each run scans the tree and the whole history once; the figures are the median
and p99 over the runs.

    python bench/bench_secrets_scan.py [--commits 100] [--files 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from legacy.fixture_repo import build, git, write  # noqa: E402
from tether.legacy.scan import scan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=100)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        planted = build(repo, extra_commits=a.commits)
        for i in range(a.files):  # ordinary code: what most of a tree is
            body = "".join(f"def f{j}(x):\n    return x * {j}  # {i}\n" for j in range(20))
            write(repo, f"pkg/m{i}.py", f'"""module {i}"""\nURL = "https://example.org/{i}"\n{body}')
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "volume")
        fps, cps, found = [], [], 0
        for _ in range(a.runs):
            r = scan([repo], hosts={"tickets.corp.test": "tickets"})
            fps.append(r.files / r.tree_seconds)
            cps.append(r.commits / r.history_seconds)
            found = len({f.fingerprint for f in r.findings} & {p.fingerprint for p in planted})
        shape = f"{r.files} files, {r.commits} commits, {a.runs} runs"
        print(f"\nsecrets scan ({shape}; {found}/{len(planted)} planted found)")
        print(f"{'figure':30} {'median':>10} {'p99 (slowest)':>14}")
        print(f"{'working tree, files/s':30} {statistics.median(fps):10.0f} {min(fps):14.0f}")
        print(f"{'git history, commits/s':30} {statistics.median(cps):10.0f} {min(cps):14.0f}")


if __name__ == "__main__":
    main()

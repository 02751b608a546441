"""Print the performance table from the rows the bench scripts recorded.

``make bench`` runs every ``bench/bench_*.py`` with ``TETHER_BENCH_OUT`` pointing at one
JSON-lines file, then this script; each row is a path, its median and p99, the floor
measured in the same run, the ratio and the target. Run: ``python bench/summary.py FILE``.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _stats import _fmt

#: The order of the README's table; a row that no script recorded is shown as not run.
ORDER = [
    "authorize",
    "authorize_jwt",
    "http_authorize",
    "gateway_latency",
    "gateway_throughput",
    "mcp_gateway",
    "workers",
    "verify",
    "trace",
    "growth_policies",
    "growth_store",
]


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TETHER_BENCH_OUT", "")
    rows: dict[str, dict[str, object]] = {}
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row["key"]] = row
    load = os.getloadavg()
    cores = os.cpu_count()
    print(f"\nperformance table (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {cores} cores)")
    print(f"| {'path':64} | {'p50 / p99':24} | {'floor in the same run':52} | {'ratio':16} | target |")
    print(f"|{'-' * 66}|{'-' * 26}|{'-' * 54}|{'-' * 18}|--------|")
    missed = 0
    for key in ORDER + sorted(set(rows) - set(ORDER)):
        row = rows.get(key)
        if row is None:
            print(f"| {key:64} | {'not run':24} | {'':52} | {'':16} |        |")
            continue
        unit = str(row["unit"])
        value = _fmt(row["p50"], unit)  # type: ignore[arg-type]
        if row.get("p99") is not None:
            value += " / " + _fmt(row["p99"], unit)  # type: ignore[arg-type]
        verdict = "met" if row["met"] else "MISSED"
        missed += not row["met"]
        print(
            f"| {row['path']!s:64} | {value:24} | {row['floor']!s:52} | {row['ratio']!s:16} "
            f"| {row['target']}: {verdict} |"
        )
    print(f"\n{len(rows)} rows, {missed} targets missed")


if __name__ == "__main__":
    main()

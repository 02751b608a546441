"""Tiny timing helpers shared by the benchmark scripts (not a test dependency).

Every script prints its own table; the figures that the README's performance table
carries are also handed to :func:`emit`, which appends one JSON line per row to the file
named by ``TETHER_BENCH_OUT`` (``make bench`` sets it and ``bench/summary.py`` prints the
whole table at the end). Each row carries its floor *measured in the same run*, so a
loaded machine moves both and the ratio stays readable.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable


def measure(fn: Callable[[], object], n: int, warmup: int = 50) -> list[float]:
    """Run ``fn`` ``n`` times after a warm-up; return per-call times in microseconds."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def measure_cpu(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    """Per-call CPU time of this process in microseconds (``CLOCK_PROCESS_CPUTIME_ID``).

    On a machine shared with other work, wall time also counts the time spent waiting for
    a core; CPU time does not, so CPU ratios stay comparable when the machine is loaded.
    """
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.process_time_ns()
        fn()
        out.append((time.process_time_ns() - t0) / 1000)
    return out


def measure_pair(
    fn: Callable[[], object], floor: Callable[[], object], n: int, blocks: int = 5, warmup: int = 50
) -> tuple[list[float], list[float]]:
    """Time ``fn`` and its ``floor`` in alternating blocks of tight loops.

    Each is measured the same way (a warm loop of its own, as the floors always were), and
    the blocks alternate so that both see the same machine load during the run.
    """
    a: list[float] = []
    b: list[float] = []
    per = max(1, n // blocks)
    for i in range(blocks):
        a += measure(fn, per, warmup if i == 0 else 5)
        b += measure(floor, per, warmup if i == 0 else 5)
    return a, b


def summary(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.99))]


def table(title: str, rows: list[tuple[str, list[float]]]) -> None:
    print(f"\n{title}")
    print(f"{'path':58} {'median µs':>10} {'p99 µs':>10}")
    for name, samples in rows:
        med, p99 = summary(samples)
        print(f"{name:58} {med:10.1f} {p99:10.1f}")


def emit(
    key: str,
    path: str,
    *,
    unit: str,
    p50: float,
    floor_p50: float,
    floor: str,
    target: str,
    met: bool,
    p99: float | None = None,
    floor_p99: float | None = None,
    ratio: str | None = None,
) -> None:
    """Record one row of the performance table (printed by ``bench/summary.py``).

    ``ratio`` defaults to ``p50/floor_p50`` (and ``p99/floor_p99`` when both are given).
    """
    if ratio is None:
        ratio = f"{p50 / floor_p50:.2f}×" if floor_p50 else "-"
        if p99 is not None and floor_p99:
            ratio += f" / {p99 / floor_p99:.2f}×"
    row = {
        "key": key,
        "path": path,
        "unit": unit,
        "p50": p50,
        "p99": p99,
        "floor_p50": floor_p50,
        "floor_p99": floor_p99,
        "floor": floor,
        "ratio": ratio,
        "target": target,
        "met": bool(met),
    }
    print(
        f"  → {path}: {_fmt(p50, unit)}"
        + (f" / {_fmt(p99, unit)}" if p99 is not None else "")
        + f"  floor {floor}  ratio {ratio}  target {target}: {'met' if met else 'MISSED'}"
    )
    out = os.environ.get("TETHER_BENCH_OUT")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "µs" and abs(value) >= 1000:
        return f"{value / 1000:.2f} ms"
    if unit in ("req/s", "events/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:,.1f} {unit}"

"""Tiny timing helpers shared by the benchmark scripts (not a test dependency)."""

from __future__ import annotations

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


def summary(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.99))]


def table(title: str, rows: list[tuple[str, list[float]]]) -> None:
    print(f"\n{title}")
    print(f"{'path':58} {'median µs':>10} {'p99 µs':>10}")
    for name, samples in rows:
        med, p99 = summary(samples)
        print(f"{name:58} {med:10.1f} {p99:10.1f}")

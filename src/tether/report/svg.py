"""Inline SVG charts for the HTML report: no scripts, no external assets.

Each chart is a function from numbers to an ``<svg>`` string, so the HTML file stays
self-contained and renders the same in a browser, a mail client's preview and a
headless screenshot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

W, H = 520, 200
PAD_L, PAD_R, PAD_T, PAD_B = 44, 12, 14, 34
OUTCOME_COLORS = {"allow": "#2e7d32", "deny": "#c62828", "approval_required": "#f9a825"}


def _frame(title: str, body: str, legend: str = "") -> str:
    return (
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>{body}{legend}</svg>'
    )


def _axes(ymax: float, label: str) -> str:
    x0, y0, y1 = PAD_L, H - PAD_B, PAD_T
    parts = [f'<line x1="{x0}" y1="{y0}" x2="{W - PAD_R}" y2="{y0}" stroke="#888"/>']
    for i in range(3):
        v = ymax * i / 2
        y = y0 - (y0 - y1) * i / 2
        parts.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#555">{v:g}</text>'
            f'<line x1="{x0}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" stroke="#eee"/>'
        )
    parts.append(
        f'<text x="{(x0 + W - PAD_R) / 2}" y="{H - 4}" font-size="10" text-anchor="middle" fill="#555">'
        f"{escape(label)}</text>"
    )
    return "".join(parts)


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.1f}"
    if abs(v) >= 0.001:
        return f"{v * 1000:.1f}ms"
    return f"{v * 1e6:.0f}µs"


def empty(title: str, why: str = "no data in the window") -> str:
    body = (
        f'<text x="{W / 2}" y="{H / 2}" font-size="13" text-anchor="middle" fill="#777">{escape(why)}</text>'
    )
    return _frame(title, body)


def histogram(
    values: Sequence[float], title: str, unit: str = "s", limit: float | None = None, bins: int = 12
) -> str:
    """Bars of ``values`` in equal bins; ``limit`` draws a labelled vertical line (a maximum)."""
    if not values:
        return empty(title)
    lo = 0.0
    hi = max(max(values), limit or 0.0) or 1.0
    width = hi / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += 1
    ymax = max(counts)
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    bw = plot_w / bins
    bars = []
    for i, c in enumerate(counts):
        h = plot_h * c / ymax if ymax else 0
        x = PAD_L + i * bw
        bars.append(
            f'<rect x="{x + 1:.1f}" y="{H - PAD_B - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
            'fill="#1565c0">'
            f"<title>{_num(i * width)}–{_num((i + 1) * width)} {unit}: {c}</title></rect>"
        )
    for i, anchor in ((0, "middle"), (bins // 2, "middle"), (bins, "end")):
        x = PAD_L + i * bw
        bars.append(
            f'<text x="{x:.1f}" y="{H - PAD_B + 12}" font-size="10" text-anchor="{anchor}" fill="#555">'
            f"{_num(i * width)}</text>"
        )
    if limit is not None:
        x = PAD_L + plot_w * min(limit, hi) / hi
        bars.append(
            f'<line x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{H - PAD_B}" stroke="#c62828" '
            'stroke-dasharray="4 3"/>'
            f'<text x="{x - 4:.1f}" y="{PAD_T + 10}" font-size="10" text-anchor="end" fill="#c62828">'
            f"max {_num(limit)}{unit}</text>"
        )
    return _frame(title, _axes(ymax, f"{title} ({unit}), n = {len(values)}") + "".join(bars))


def stacked_bars(series: Mapping[str, Any], title: str) -> str:
    """Decisions per time bucket, stacked by outcome."""
    rows: Sequence[Mapping[str, Any]] = series.get("buckets") or []
    if not rows:
        return empty(title)
    outcomes = [o for o in OUTCOME_COLORS if any(r.get(o) for r in rows)]
    totals = [sum(int(r.get(o, 0)) for o in outcomes) for r in rows]
    ymax = max(totals) or 1
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    bw = plot_w / len(rows)
    parts = []
    for i, r in enumerate(rows):
        y: float = H - PAD_B
        for o in outcomes:
            c = int(r.get(o, 0))
            if not c:
                continue
            h = plot_h * c / ymax
            y -= h
            parts.append(
                f'<rect x="{PAD_L + i * bw + 1:.1f}" y="{y:.1f}" width="{max(bw - 2, 1):.1f}" '
                f'height="{h:.1f}" '
                f'fill="{OUTCOME_COLORS[o]}"><title>{o}: {c}</title></rect>'
            )
    size = float(series.get("bucket_seconds") or 0)
    legend = "".join(
        f'<rect x="{PAD_L + 8 + k * 130}" y="{PAD_T - 2}" width="10" height="10" fill="{OUTCOME_COLORS[o]}"/>'
        f'<text x="{PAD_L + 22 + k * 130}" y="{PAD_T + 7}" font-size="10" fill="#333">{o}</text>'
        for k, o in enumerate(outcomes)
    )
    label = f"decisions per {_duration(size)} bucket, {sum(totals)} in all"
    return _frame(title, _axes(ymax, label) + "".join(parts), legend)


def _duration(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= n and math.isclose(seconds % n, 0):
            return f"{seconds / n:g} {unit}"
    return f"{seconds:g} s"


__all__ = ["empty", "histogram", "stacked_bars"]

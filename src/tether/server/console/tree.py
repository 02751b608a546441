"""The delegation tree of a task as an SVG drawn on the server (no layout library, no script).

A tidy layered layout: depth goes right, siblings stack down, a parent sits level with
its first child. Every string that came from an agent is escaped; styling is by class
only, so the strict Content-Security-Policy (no inline styles) holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from markupsafe import Markup, escape

from tether.model import Task

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 250, 56, 60, 18, 10


def _short(agent: str, n: int = 30) -> str:
    name = agent.rsplit("/", 1)[-1] if agent.startswith("spiffe://") else agent
    return name if len(name) <= n else name[: n - 1] + "…"


def render(tasks: Sequence[Task], current: str, prefix: str = "/console") -> Markup:
    """``tasks``: one tree (parents before children); ``current`` is highlighted."""
    ids = {t.id for t in tasks}
    kids: dict[str | None, list[Task]] = {}
    for t in tasks:
        parent = t.parent_id if t.parent_id in ids else None
        kids.setdefault(parent, []).append(t)
    pos: dict[str, tuple[int, int]] = {}
    row = 0

    def place(t: Task, depth: int, seen: frozenset[str]) -> None:
        nonlocal row
        pos[t.id] = (depth, row)
        children = [c for c in kids.get(t.id, []) if c.id not in seen]
        if not children:
            row += 1
        for c in children:
            place(c, depth + 1, seen | {c.id})

    for root in kids.get(None, []):
        place(root, 0, frozenset({root.id}))
    depth = max((d for d, _ in pos.values()), default=0)
    width = PAD * 2 + (depth + 1) * NODE_W + depth * GAP_X
    height = PAD * 2 + max(row, 1) * (NODE_H + GAP_Y) - GAP_Y

    def xy(tid: str) -> tuple[int, int]:
        d, r = pos[tid]
        return PAD + d * (NODE_W + GAP_X), PAD + r * (NODE_H + GAP_Y)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="tree" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="delegation tree">'
    ]
    for t in tasks:
        if t.parent_id in pos and t.id in pos:
            px, py = xy(t.parent_id or "")
            cx, cy = xy(t.id)
            x1, y1, y2 = px + NODE_W, py + NODE_H // 2, cy + NODE_H // 2
            mid = x1 + GAP_X // 2
            parts.append(f'<path class="edge" d="M{x1},{y1} H{mid} V{y2} H{cx}"/>')
    for t in tasks:
        if t.id not in pos:
            continue
        x, y = xy(t.id)
        cls = f"node state-{escape(t.state.value)}" + (" current" if t.id == current else "")
        href = f"{prefix}/tasks/{quote(t.id, safe='')}"
        parts.append(
            f'<a href="{escape(href)}"><g class="{cls}" data-task="{escape(t.id)}">'
            f"<title>{escape(t.agent)}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text class="agent" x="{x + 10}" y="{y + 20}">{escape(_short(t.agent))}</text>'
            f'<text class="meta" x="{x + 10}" y="{y + 38}">'
            f"{escape(t.intent)} · {escape(t.state.value)}</text>"
            f'<text class="tid" x="{x + 10}" y="{y + 51}">{escape(t.id)}</text>'
            "</g></a>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every interpolated value is escaped above)

"""Render a report dict as Markdown or as one self-contained HTML file (inline CSS + SVG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from tether.report import svg

_BADGE = {"met": "#2e7d32", "partly met": "#ef6c00", "not met": "#c62828", "out of scope": "#607d8b"}
_SHOW_IDS = 12


def fmt_value(m: Mapping[str, Any]) -> str:
    v, unit = m.get("value"), m.get("unit")
    if v is None:
        return "no data"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if unit == "s" and isinstance(v, int | float):
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.1f} s"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _by_framework(report: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
    return [(f, [c for c in report["controls"] if c["framework"] == f["id"]]) for f in report["frameworks"]]


def _ids(m: Mapping[str, Any]) -> str:
    ids: Sequence[str] = m.get("events") or []
    more = int(m.get("n_events") or 0) - min(len(ids), _SHOW_IDS)
    shown = ", ".join(ids[:_SHOW_IDS])
    return shown + (f" … +{more} more" if more > 0 else "")


# --- Markdown ---------------------------------------------------------------------------


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Mapping[str, Any]) -> str:
    w, d, s = report["window"], report["deployment"], report["summary"]
    ev = report["evidence"]
    lines = [
        "# Tether compliance report",
        "",
        f"- Window: {w['since_iso']} → {w['until_iso']}",
        f"- Deployment: trust domain `{d['trust_domain']}`, environment `{d['environment']}`, "
        f"node `{d['node_id']}`, store {d['store']}, policy `{d['policy_version']}`",
        f"- Generated: {report['generated_at']}; mapping version {report['mapping']['version']}",
        f"- Status: {s['met']} met, {s['partly met']} partly met, {s['not met']} not met, "
        f"{s['out of scope']} out of scope",
        "- The JSON form of this report is signed (detached JWS): `tether report verify report.json`.",
        "",
    ]
    for fw, controls in _by_framework(report):
        lines += [f"## {fw['title']}", ""]
        if fw.get("note"):
            lines += [fw["note"], ""]
        lines += ["| control | title | status | evidence | why |", "|---|---|---|---|---|"]
        for c in controls:
            shown = "; ".join(f"{ev[k]['label']}: {fmt_value(ev[k])}" for k in c.get("evidence", []))
            why = c.get("reason") or " · ".join(c["why"])
            lines.append(
                f"| {_md(c['id'])} | {_md(c['title'])} | **{c['status']}** | {_md(shown)} | {_md(why)} |"
            )
        lines.append("")
    lines += ["## Evidence", "", "| key | what | value | source | audit events |", "|---|---|---|---|---|"]
    for k, m in ev.items():
        note = f" ({m['note']})" if m.get("note") else ""
        lines.append(
            f"| `{k}` | {_md(m['label'])} | {_md(fmt_value(m))}{_md(note)} | {m['source']} | {_md(_ids(m))} |"
        )
    return "\n".join(lines) + "\n"


# --- HTML -------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;margin:0;
background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.meta{color:#555;margin:0 0 16px}.meta code{background:#eceff1;padding:1px 4px;border-radius:3px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0002;min-width:120px}
.card b{display:block;font-size:26px}
.charts{display:grid;grid-template-columns:repeat(2,1fr);gap:12px}
.chart{background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 2px #0002}
.chart h3{font-size:13px;margin:2px 6px 4px;color:#333}.chart svg{width:100%;height:auto}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002;border-radius:8px;
overflow:hidden}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eceff1;vertical-align:top}
th{background:#eceff1;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#455a64}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;white-space:nowrap}
.id{font-family:ui-monospace,Menlo,monospace;white-space:nowrap}
details{margin-top:4px}summary{cursor:pointer;color:#1565c0}
.ev{font-size:12px;margin:4px 0 0}.ev td{padding:2px 6px}
.ids{font-family:ui-monospace,Menlo,monospace;font-size:11px;color:#555;word-break:break-all}
.note{color:#555;font-size:12px}.why{color:#444;font-size:12px}
"""


_NOTE = (
    "Every status is computed from the evidence shown, by the rules of the shipped mapping (version "
    "{version}). The JSON form of this report is signed with the broker's checkpoint key: "
    "<code>tether report verify report.json</code>."
)


def _pill(status: str) -> str:
    return f'<span class="pill" style="background:{_BADGE.get(status, "#555")}">{escape(status)}</span>'


def _evidence_rows(keys: Sequence[str], ev: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for k in keys:
        m = ev[k]
        note = f'<div class="note">{escape(m["note"])}</div>' if m.get("note") else ""
        rows.append(
            f"<tr><td>{escape(m['label'])}{note}</td><td><b>{escape(fmt_value(m))}</b></td>"
            f'<td>{escape(m["source"])}</td><td class="ids">{escape(_ids(m))}</td></tr>'
        )
    return (
        '<table class="ev"><tr><th>evidence</th><th>value</th><th>source</th><th>audit events</th></tr>'
        + ("".join(rows) + "</table>")
    )


def _control_row(c: Mapping[str, Any], ev: Mapping[str, Mapping[str, Any]]) -> str:
    if c["status"] == "out of scope":
        detail = f'<div class="why">{escape(c.get("reason", ""))}</div>'
    else:
        mech = ", ".join(escape(m["name"]) for m in c.get("mechanisms", []))
        why = "<br>".join(escape(w) for w in c["why"])
        detail = (
            f'<div class="why">{why}</div><details><summary>mechanisms and evidence</summary>'
            f'<div class="note">mechanisms: {mech}</div>{_evidence_rows(c.get("evidence", []), ev)}</details>'
        )
    return (
        f'<tr data-control="{escape(c["id"])}" data-status="{escape(c["status"])}">'
        f'<td class="id">{escape(c["id"])}</td><td>{escape(c["title"])}{detail}</td>'
        f"<td>{_pill(c['status'])}</td></tr>"
    )


def to_html(report: Mapping[str, Any]) -> str:
    w, d, s = report["window"], report["deployment"], report["summary"]
    ev = report["evidence"]
    dist = report["charts"]["distributions"]
    max_ttl = ev["tasks.max_ttl_configured"]["value"]
    charts = [
        ("Decisions over time", svg.stacked_bars(report["charts"]["decisions"], "decisions over time")),
        (
            "Task TTL vs the configured maximum",
            svg.histogram(dist.get("task_ttl", []), "task TTL", limit=max_ttl),
        ),
        ("Credential TTL", svg.histogram(dist.get("credential_ttl", []), "credential TTL")),
        (
            "Revocation latency (task end → lease revoked)",
            svg.histogram(dist.get("revocation_latency", []), "revocation latency"),
        ),
    ]
    cards = "".join(
        f'<div class="card" style="border-top:4px solid {_BADGE[k]}"><b>{s[k]}</b>{escape(k)}</div>'
        for k in ("met", "partly met", "not met", "out of scope")
    )
    sections = []
    for fw, controls in _by_framework(report):
        note = f'<p class="note">{escape(fw["note"])}</p>' if fw.get("note") else ""
        rows = "".join(_control_row(c, ev) for c in controls)
        sections.append(
            f'<section data-framework="{escape(fw["id"])}"><h2>{escape(fw["title"])}</h2>{note}'
            f"<table><tr><th>control</th><th>what and why</th><th>status</th></tr>{rows}</table></section>"
        )
    appendix = _evidence_rows(list(ev), ev)
    meta = " · ".join(
        f"{label} <code>{escape(str(value))}</code>"
        for label, value in (
            ("window", f"{w['since_iso']} → {w['until_iso']}"),
            ("trust domain", d["trust_domain"]),
            ("environment", d["environment"]),
            ("node", d["node_id"]),
            ("policy", d["policy_version"]),
            ("generated", report["generated_at"]),
        )
    )
    chart_html = "".join(f'<div class="chart"><h3>{escape(t)}</h3>{c}</div>' for t, c in charts)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Tether compliance report</title>"
        f"<style>{_CSS}</style></head><body><main>"
        "<h1>Tether compliance report</h1>"
        f'<p class="meta">{meta}</p>'
        f'<p class="note">{_NOTE.format(version=report["mapping"]["version"])}</p>'
        f'<div class="cards">{cards}</div>'
        f'<div class="charts">{chart_html}</div>'
        + "".join(sections)
        + f"<h2>All evidence</h2>{appendix}</main></body></html>\n"
    )


__all__ = ["fmt_value", "to_html", "to_markdown"]

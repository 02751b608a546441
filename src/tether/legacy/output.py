"""Scan output that leaves the machine: SARIF 2.1.0 and baseline files.

Both carry fingerprints and locations only. A baseline acknowledges findings by
fingerprint, so ``--fail-on new`` fails a CI step only for secrets it has not seen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tether.errors import ConfigError
from tether.legacy.scan import Finding

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
BASELINE_VERSION = 1


def _rule_id(kind: str) -> str:
    return "tether-secret/" + "-".join(kind.lower().split())


def sarif(findings: list[Finding], version: str) -> dict[str, Any]:
    kinds = sorted({f.kind for f in findings})
    rules = [
        {
            "id": _rule_id(k),
            "name": "".join(w.capitalize() for w in k.split()),
            "shortDescription": {"text": f"{k} in source or history"},
            "help": {"text": "Import it with `tether secrets import`, rotate it, then delete it from code."},
            "defaultConfiguration": {"level": "error"},
        }
        for k in kinds
    ]
    results = []
    for f in findings:
        where = f"commit {f.commit[:12]}" if f.commit else "the working tree"
        results.append(
            {
                "ruleId": _rule_id(f.kind),
                "ruleIndex": kinds.index(f.kind),
                "level": "error" if f.live else "warning",
                "message": {"text": f"{f.kind} {f.fingerprint} in {where}"},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": f.path},
                            "region": {"startLine": max(1, f.line)},
                        }
                    }
                ],
                "partialFingerprints": {"tetherSecretFingerprint/v1": f.fingerprint},
                "properties": {
                    "commit": f.commit,
                    "live": f.live,
                    "service": f.service,
                    "firstSeen": f.first_seen,
                },
            }
        )
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "tether-secrets",
                        "version": version,
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }


def baseline(findings: list[Finding]) -> dict[str, Any]:
    seen: dict[str, dict[str, Any]] = {}
    for f in findings:
        seen.setdefault(f.fingerprint, {"fingerprint": f.fingerprint, "kind": f.kind, "path": f.path})
    return {"version": BASELINE_VERSION, "findings": sorted(seen.values(), key=lambda x: x["fingerprint"])}


def load_baseline(path: Path) -> set[str]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"cannot read baseline `{path}`: {e}", code="baseline_invalid", field="baseline"
        ) from None
    items = doc.get("findings") if isinstance(doc, dict) else None
    if doc.get("version") != BASELINE_VERSION or not isinstance(items, list):
        raise ConfigError(
            f"`{path}` is not a tether secrets baseline (version {BASELINE_VERSION}); "
            "write one with `tether secrets scan --write-baseline FILE`",
            code="baseline_invalid",
            field="baseline",
        )
    fps = set()
    for i, item in enumerate(items):
        fp = item.get("fingerprint") if isinstance(item, dict) else None
        if not isinstance(fp, str) or not fp.startswith("fp_"):
            raise ConfigError(
                f"`{path}`: findings[{i}] has no fingerprint", code="baseline_invalid", field="baseline"
            )
        fps.add(fp)
    return fps

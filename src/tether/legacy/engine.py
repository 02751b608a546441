"""The detection engine: detect-secrets' plugins and filters, plus Tether's plugins.

detect-secrets is driven line by line (``_scan_line`` / ``_is_filtered_out`` — the same
calls its own ``scan_file`` makes, which is why the minor version is pinned) so that
working-tree files and lines added in git history go through one path, and plugins are
built once per scan rather than once per line. Secret values stay inside this module's
``Hit`` objects; everything printed is a fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detect_secrets.core import scan as _ds_scan
from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.settings import get_plugins, transient_settings
from detect_secrets.util.code_snippet import get_code_snippet

_PLUGINS_FILE = Path(__file__).with_name("plugins.py")
_TETHER_PLUGINS = ("PostgresUrlDetector", "ServiceUrlCredentialDetector")
# Generic detectors lose to a specific one on the same line and value.
_GENERIC = {"Base64 High Entropy String": 3, "Hex High Entropy String": 3, "Secret Keyword": 2}
_GENERIC["Basic Auth Credentials"] = 1
MAX_LINE = 4096  # minified bundles and data blobs: entropy noise, not configuration

# Values that are documentation, not credentials (AWS's own example keys, `changeme`, `<token>`).
_PLACEHOLDER = re.compile(
    r"(?i)^(?:changeme|change_me|password|passwd|secret|example|dummy|test|xxx+|\*+|<[^>]*>|\{\{.*\}\}|\$\{.*\})$"
    r"|EXAMPLE|^x{6,}$|^(?:your|my)[-_]"
)
# A 40/64-hex value under a key that names a digest is a commit id or checksum.
_DIGEST_KEY = re.compile(r"(?i)\b(?:sha\d*|commit|digest|checksum|hash|rev|revision|integrity)\b\W*[:=]")


def fingerprint(value: str) -> str:
    """Stable, one-way name of a secret value (the only form of it that is ever shown)."""
    return "fp_" + hashlib.sha256(b"tether-secret-fingerprint:v1:" + value.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class Hit:
    kind: str
    line: int
    fingerprint: str
    value: str  # never leaves the process: not in repr, JSON, SARIF or logs

    def __repr__(self) -> str:
        return f"Hit({self.kind!r}, line={self.line}, {self.fingerprint})"


@contextmanager
def engine(hosts: Sequence[str] = ()) -> Iterator[Engine]:
    """detect-secrets configured with all its plugins, default filters and Tether's plugins."""
    # detect-secrets logs skipped files and filter decisions; never let it near a handler.
    logging.getLogger("detect-secrets").setLevel(logging.CRITICAL)
    get_mapping_from_secret_type_to_class.cache_clear()
    classes: list[type] = list(get_mapping_from_secret_type_to_class().values())
    builtin = [{"name": c.__name__} for c in classes if c.__name__ not in _TETHER_PLUGINS]
    ours: list[dict[str, Any]] = [
        {"name": "PostgresUrlDetector", "path": f"file://{_PLUGINS_FILE}"},
        {"name": "ServiceUrlCredentialDetector", "path": f"file://{_PLUGINS_FILE}", "hosts": list(hosts)},
    ]
    with transient_settings({"plugins_used": builtin + ours}):
        get_mapping_from_secret_type_to_class.cache_clear()
        try:
            yield Engine(get_plugins())
        finally:
            get_mapping_from_secret_type_to_class.cache_clear()


class Engine:
    def __init__(self, plugins: list[Any]) -> None:
        self._plugins = plugins

    def scan_lines(self, filename: str, lines: Sequence[tuple[int, str]]) -> list[Hit]:
        """Hits in ``lines`` (number, text) of ``filename`` (its name picks the file-type rules)."""
        texts = [t for _, t in lines]
        found: dict[tuple[int, str], Hit] = {}
        for index, (number, raw) in enumerate(lines):
            line = raw.rstrip()
            if not line or len(line) > MAX_LINE:
                continue
            snippet = get_code_snippet(lines=texts, line_number=index + 1)
            if _ds_scan._is_filtered_out(["line"], filename=filename, line=line, context=snippet):
                continue
            for plugin in self._plugins:
                for s in _ds_scan._scan_line(
                    plugin=plugin, filename=filename, line=line, line_number=number, context=snippet
                ):
                    value = s.secret_value
                    if not value or _is_lookalike(value, line):
                        continue
                    if _ds_scan._is_filtered_out(
                        ["context"],
                        filename=filename,
                        secret=value,
                        plugin=plugin,
                        line=line,
                        context=snippet,
                    ):
                        continue
                    value = _whole_token(line, value)
                    if s.type == "Private Key":
                        # The plugin's value is the BEGIN marker: name the key by its body.
                        value = _pem_block(texts, index)
                    key = (number, value)
                    old = found.get(key)
                    if old is None or _GENERIC.get(old.kind, 0) > _GENERIC.get(s.type, 0):
                        found[key] = Hit(s.type, number, fingerprint(value), value)
        return sorted(found.values(), key=lambda h: (h.line, h.kind))


_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_\-.+/=~]*")


def _whole_token(line: str, value: str) -> str:
    """Extend a value some detectors cut short (GitHub's `ghp` prefix group, a JWT without
    its signature) to the whole token it starts, so the fingerprint names that token."""
    at = line.find(value)
    if at < 0:
        return value
    m = _TOKEN_TAIL.match(line, at + len(value))
    return line[at : m.end()] if m else value


def _pem_block(texts: Sequence[str], start: int) -> str:
    block: list[str] = []
    for t in texts[start : start + 200]:
        block.append(t.strip())
        if "-----END" in t:
            break
    return "\n".join(block)


def _is_lookalike(value: str, line: str) -> bool:
    v = value.strip("'\"")
    if _PLACEHOLDER.search(v):
        return True
    return bool(re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", v) and _DIGEST_KEY.search(line))

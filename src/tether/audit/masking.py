"""Masking: secrets are removed from event payloads before they are hashed and written.

A :class:`Masker` is a payload filter for ``AuditChain.filters``. It applies, in order:

1. **Secret-looking keys** (always on): any key whose name contains ``secret``,
   ``password``/``passwd``, ``token``, ``authorization``, ``api_key``, ``cookie``,
   ``private_key`` or ``credential_value`` has its whole value replaced.
2. **Headers** (always on for the usual ones, plus ``audit.mask_headers``): under any key
   ending in ``headers`` (``headers``, ``raw_headers``…), as an object or a list of
   ``[name, value]`` pairs, case-insensitive.
3. **JSON paths** (``audit.mask_paths``): dotted paths from the payload root, ``*`` for
   any key or list index, e.g. ``request.body.card_number`` or ``arguments.*.ssn``.
4. **Value patterns** (default ones for bearer tokens, JWTs, secrets in query strings and
   PEM private keys, plus ``audit.mask_patterns``): the matching text inside any string
   is replaced, the rest stays readable.
5. **Registered secrets**: exact values a connector hands over with
   :meth:`Masker.register_secret` (the ``inject`` connector's upstream secrets) are
   replaced wherever they appear inside a string.

What was masked is listed in the payload's ``_masked`` key (paths, never values), so an
investigator knows that something was there, in the spirit of OPA's decision-log
``masked`` field. Masking happens before hashing, so the chain covers the masked payload.

Inside a decision's ``input`` (what Cedar saw, kept so the decision can be replayed) a
masked value is not replaced by text: each masked leaf becomes
``{"$masked": "<Cedar type>", "digest": "hmac-sha256:…"}`` (:func:`mask_digest`, keyed with
a salt derived from the master key), so replay knows its type and can still decide
equality with a policy literal or another masked value. Path rules that start with
``arguments.`` apply there too, as ``input.call.…`` and ``input.args.…``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from tether.config import AuditSettings

MASK = "[masked]"
MASKED_KEY = "_masked"
#: The key of a typed mask inside a decision input (``{"$masked": type, "digest": …}``).
TYPED_MASK_KEY = "$masked"
INPUT_KEY = "input"
_MAX_DEPTH = 64  # deeper payloads are masked whole: no unbounded recursion on input
_MAX_SECRETS = 4096

_SECRET_KEY = re.compile(
    r"secret|passw(?:or)?d|passphrase|token|authorization|api[-_]?key|apikey|cookie|"
    r"private[-_]?key|credential[-_]?value",
    re.IGNORECASE,
)
DEFAULT_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-amz-security-token",
)
DEFAULT_PATTERNS = (
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}",
    r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",  # a JWT / JWS
    r"(?i)(?<=[?&;])(?:access_token|token|api_?key|key|secret|password|sig|signature|"
    r"x-amz-signature|client_secret)=[^&#\s]+",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
)


def mask_digest(salt: bytes, value: Any) -> str:
    """The salted digest a typed mask carries: HMAC-SHA256 over the value's canonical JSON.

    Salted so that a low-entropy value (a PIN, a card number) cannot be found again by
    hashing guesses without the deployment's key; replay, holding the key, hashes the
    literals of a candidate policy set to recognise the values that equal them."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "hmac-sha256:" + hmac.new(salt, text.encode(), hashlib.sha256).hexdigest()[:32]


def salt_from_master_key(master_key: bytes) -> bytes:
    """The digest salt of typed masks, derived from (never equal to) the master key."""
    return hmac.new(master_key, b"tether/audit/mask-digest/v1", hashlib.sha256).digest()


def cedar_type(value: Any) -> str:
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, int):
        return "Long"
    if isinstance(value, float):
        return "Decimal"
    return "String"


def is_typed_mask(value: Any) -> bool:
    return isinstance(value, dict) and TYPED_MASK_KEY in value and "digest" in value


def _parse_path(path: str) -> tuple[str, ...]:
    p = path.strip()
    p = p[1:] if p.startswith("$") else p
    return tuple(part for part in p.strip(".").split(".") if part)


#: Texts one of which every match of a built-in rule contains (lower case; searched in the
#: lowered payload text). Secret-looking keys: each alternative of ``_SECRET_KEY``; header
#: maps: a key ending in ``headers``; the default value patterns: ``bearer``, a JWT's
#: ``eyJ``, a query-string secret's ``<name>=`` (each name ends in one of these), a PEM
#: header. ``tests/audit/test_masking_untouched.py`` pins that each rule's matches do.
_MUST_CONTAIN = (
    "secret",
    "passw",
    "passphrase",
    "token",
    "authorization",
    "apikey",
    "api-key",
    "api_key",
    "cookie",
    "privatekey",
    "private-key",
    "private_key",
    "credentialvalue",
    "credential-value",
    "credential_value",
    'headers"',
    "bearer",
    "eyj",
    "key=",
    "sig=",
    "signature=",
    "-----begin",
)
_CLEAN_MAX = 8192  # clean strings remembered per masker
_CLEAN_MAX_LEN = 256  # longer strings are rarely repeated: not worth keeping


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Whether a payload key names a secret (keys repeat from event to event)."""
    return _SECRET_KEY.search(key) is not None


class Masker:
    """A payload filter; thread-safe (registered secrets may change while events flow)."""

    def __init__(
        self,
        *,
        paths: Iterable[str] = (),
        headers: Iterable[str] = (),
        patterns: Iterable[str] = (),
        salt: bytes | None = None,
    ) -> None:
        parsed = [_parse_path(p) for p in paths]
        # Argument rules reach the arguments a decision input recorded, too.
        extra = [
            (INPUT_KEY, part, *p[1:])
            for p in parsed
            if p and p[0] == "arguments"
            for part in ("call", "args")
        ]
        self._paths = parsed + extra
        #: Keys the digests of typed masks (random when not given: digests then only
        #: compare within this process).
        self.salt = salt if salt is not None else os.urandom(32)
        self._headers = {h.lower() for h in (*DEFAULT_HEADERS, *headers)}
        # Compiled one by one: a user pattern may carry its own global flags (`(?i)`).
        user_patterns = tuple(patterns)
        self._patterns = [re.compile(p) for p in (*DEFAULT_PATTERNS, *user_patterns)]
        # A user pattern may anchor on a string's start or end (``^``, ``$``): it cannot be
        # searched for in a whole payload's text, so :meth:`untouched` then says no.
        self._user_patterns = bool(user_patterns)
        # The key each path rule ends on, quoted as it appears in a payload's text.
        ends = [next((k for k in reversed(p) if k != "*" and not k.isdigit()), None) for p in self._paths]
        self._path_keys: tuple[str, ...] | None = (
            None if None in ends else tuple(f'"{k}":' for k in ends if k is not None)
        )
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._secrets_re: re.Pattern[str] | None = None
        # Strings already found to need no masking under the current patterns and secrets
        # (most payload strings repeat: actions, resources, outcomes). Replaced, never
        # edited, when the registered secrets change, so a walk that started before keeps
        # filling its own, discarded copy. Only clean strings are kept: no secret lingers.
        self._clean: dict[str, None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, s: AuditSettings, *, salt: bytes | None = None) -> Masker:
        return cls(paths=s.mask_paths, headers=s.mask_headers, patterns=s.mask_patterns, salt=salt)

    def typed_mask(self, value: Any) -> Any:
        """``value`` with every leaf replaced by its typed mask (structure kept)."""
        if is_typed_mask(value):
            return value
        if isinstance(value, dict):
            return {k: self.typed_mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.typed_mask(v) for v in value]
        return {TYPED_MASK_KEY: cedar_type(value), "digest": mask_digest(self.salt, value)}

    # -- registered secrets ----------------------------------------------------------------
    def register_secret(self, value: str) -> None:
        """Mask ``value`` wherever it appears from now on (values under 6 characters are
        refused: masking them would shred ordinary text without protecting anything)."""
        if len(value) < 6:
            raise ValueError("a registered secret must be at least 6 characters")
        with self._lock:
            self._secrets[value] = None
            self._secrets.move_to_end(value)
            while len(self._secrets) > _MAX_SECRETS:
                self._secrets.popitem(last=False)
            self._rebuild()

    def forget_secret(self, value: str) -> None:
        with self._lock:
            self._secrets.pop(value, None)
            self._rebuild()

    def _rebuild(self) -> None:
        # Longest first so a secret that contains another is masked whole.
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._secrets_re = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._clean = {}

    # -- the filter --------------------------------------------------------------------------
    def untouched(self, text: str) -> bool:
        """Whether this filter would leave unchanged the payload whose canonical text is
        ``text`` — a text without a backslash, so that every string of the payload appears
        in it verbatim. Sound, not complete: ``True`` only when no rule can match (no key,
        literal or registered secret any rule needs is in the text); ``False`` sends the
        payload through the full walk. This lets the audit writer skip the walk for the
        common payload that holds nothing to mask (see docs/architecture.md, "Hot path")."""
        if "\\" in text or self._user_patterns or self._path_keys is None:
            return False
        if text.count("{") + text.count("[") > _MAX_DEPTH:
            return False  # maybe deeper than the walk allows (brackets in strings count too)
        low = text.lower()
        if any(lit in low for lit in _MUST_CONTAIN):
            return False
        if any(k in text for k in self._path_keys):
            return False
        with self._lock:
            secrets_re = self._secrets_re
        return secrets_re is None or secrets_re.search(text) is None

    def __call__(self, _type: str, payload: dict[str, Any]) -> dict[str, Any]:
        masked: list[str] = []
        with self._lock:
            secrets_re, clean = self._secrets_re, self._clean
        out: dict[str, Any] = self._walk(payload, (), masked, secrets_re, 0, False, clean)
        for path in self._paths:
            out = self._mask_path(out, path, (), masked)
        if masked:
            previous = payload.get(MASKED_KEY)
            keep = [p for p in previous if isinstance(p, str)] if isinstance(previous, list) else []
            out[MASKED_KEY] = sorted(set(keep) | set(masked))
        return out

    def _walk(
        self,
        value: Any,
        path: tuple[str, ...],
        masked: list[str],
        secrets_re: re.Pattern[str] | None,
        depth: int,
        typed: bool,
        clean: dict[str, None],
    ) -> Any:
        if depth > _MAX_DEPTH:
            masked.append(_fmt(path))
            return MASK
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            headers = bool(path) and path[-1].lower().endswith("headers")
            for k, v in value.items():
                key = str(k)
                if key == MASKED_KEY and not path:
                    out[key] = v
                elif _secret_key(key) or (headers and key.lower() in self._headers):
                    out[key] = self.typed_mask(v) if typed else MASK
                    masked.append(_fmt((*path, key)))
                else:
                    inner = typed or (not path and key == INPUT_KEY)
                    out[key] = self._walk(v, (*path, key), masked, secrets_re, depth + 1, inner, clean)
            return out
        if isinstance(value, list | tuple):
            headers = bool(path) and path[-1].lower().endswith("headers")
            items: list[Any] = []
            for i, v in enumerate(value):
                if (
                    headers
                    and isinstance(v, list | tuple)
                    and len(v) == 2
                    and isinstance(v[0], str)
                    and v[0].lower() in self._headers
                ):
                    items.append([v[0], self.typed_mask(v[1]) if typed else MASK])
                    masked.append(_fmt((*path, str(i))))
                else:
                    items.append(self._walk(v, (*path, str(i)), masked, secrets_re, depth + 1, typed, clean))
            return items
        if isinstance(value, str):
            if value in clean:
                return value
            new = value
            for pattern in self._patterns:
                new = pattern.sub(MASK, new)
            if secrets_re is not None:
                new = secrets_re.sub(MASK, new)
            if new != value:
                masked.append(_fmt(path))
                # In a decision input a partly masked string would replay as another value.
                return self.typed_mask(value) if typed else new
            if len(value) <= _CLEAN_MAX_LEN:
                if len(clean) >= _CLEAN_MAX:
                    clean.clear()
                clean[value] = None
            return new
        return value

    def _mask_path(self, value: Any, rest: tuple[str, ...], at: tuple[str, ...], masked: list[str]) -> Any:
        if not rest:
            if at and at[0] == INPUT_KEY:
                if not is_typed_mask(value):
                    masked.append(_fmt(at))
                return self.typed_mask(value)
            if value != MASK:
                masked.append(_fmt(at))
            return MASK
        head, tail = rest[0], rest[1:]
        if isinstance(value, dict):
            out = dict(value)
            for k in list(out) if head == "*" else [head] if head in out else []:
                out[k] = self._mask_path(out[k], tail, (*at, k), masked)
            return out
        if isinstance(value, list):
            items = list(value)
            idx = (
                range(len(items))
                if head == "*"
                else ([int(head)] if head.isdigit() and int(head) < len(items) else [])
            )
            for i in idx:
                items[i] = self._mask_path(items[i], tail, (*at, str(i)), masked)
            return items
        return value


def _fmt(path: tuple[str, ...]) -> str:
    return "$." + ".".join(path) if path else "$"

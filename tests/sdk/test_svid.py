"""SVID sources: caching until near expiry, files, callables, one retry on 401."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.errors import ConfigError, Unauthenticated
from tether.sdk import CachedSvid, CallableSvid, Client, FileSvid, StaticSvid


def test_cached_svid_reuses_until_margin(domain: Any):
    """A cached SVID is reused while fresh and fetched again inside the renewal margin."""
    now = [1_000_000.0]
    fetched: list[str] = []

    def fetch(aud: str) -> str:
        fetched.append(aud)
        return domain.svid("agent", aud, ttl=300, now=now[0])

    cache = CachedSvid(CallableSvid(fetch), margin=30, clock=lambda: now[0])
    first = cache.fetch("aud")
    assert cache.fetch("aud") == first and len(fetched) == 1
    now[0] += 280  # 20 s left: inside the margin
    cache.fetch("aud")
    assert len(fetched) == 2


def test_file_svid_missing_file(tmp_path: Path):
    """A missing SVID file is Unauthenticated `svid_unavailable`."""
    with pytest.raises(Unauthenticated) as exc:
        FileSvid(tmp_path / "nope.jwt").fetch("aud")
    assert exc.value.code == "svid_unavailable"


def test_file_svid_reads_rotated_token(tmp_path: Path):
    """The file is read on each fetch, so a rotated token is picked up."""
    f = tmp_path / "svid.jwt"
    f.write_text("one\n")
    src = FileSvid(f)
    assert src.fetch("aud") == "one"
    f.write_text("two")
    assert src.fetch("aud") == "two"


def test_failing_callable_is_svid_unavailable():
    """A source that raises is turned into `svid_unavailable` (no identity, nothing opened)."""

    def broken(aud: str) -> str:
        raise OSError("socket gone")

    with pytest.raises(Unauthenticated) as exc:
        CachedSvid(CallableSvid(broken)).fetch("aud")
    assert exc.value.code == "svid_unavailable"


def test_client_without_source_says_what_to_do():
    """A client without an SVID source refuses to open a task with `svid_unavailable`."""
    with pytest.raises(ConfigError) as exc:
        Client("http://broker").task("support.triage", [("read", "crm")])
    assert exc.value.code == "svid_unavailable"


def test_stale_svid_is_refetched_once(client: Any, runtime: Any, domain: Any):
    """A rejected cached SVID is dropped and fetched again once; the task then opens."""
    aud = runtime.settings.broker_audience
    tokens = iter([domain.svid("orchestrator", "spiffe://wrong/audience"), domain.svid("orchestrator", aud)])
    c = Client("", svid=lambda _aud: next(tokens), audience=aud, http=client)
    with c.task("support.triage", [("read", "crm")], ttl=60) as task:
        assert task.id.startswith("tsk_")


def test_static_svid_returns_token():
    """A static source hands back its token stripped."""
    assert StaticSvid(" a.b.c\n").fetch("x") == "a.b.c"

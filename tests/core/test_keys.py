"""Signing keys: encrypted at rest, rotated with overlap, published as JWKS."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tether.errors import ConfigError
from tether.identity.keys import KeyRing, load_master_key
from tether.store import tables as t
from tether.store.db import Database


@pytest.fixture
def db(store_url):
    d = Database(store_url)
    d.migrate()
    yield d
    d.dispose()


def test_private_key_is_encrypted_at_rest(db, tmp_path):
    """The stored private key is ciphertext: no PKCS#8 DER header appears in the row."""
    ring = KeyRing(db, load_master_key(tmp_path, environ={}), rotate_after=3600, overlap=60)
    key = ring.ensure_current()
    with db.read() as conn:
        blob = conn.execute(
            select(t.signing_keys.c.private_enc).where(t.signing_keys.c.kid == key.kid)
        ).scalar()
    assert b"\x30\x81" not in blob[:16] and len(blob) > 100


def test_wrong_master_key_refuses(db, tmp_path):
    """A store opened with another master key cannot decrypt its keys and refuses to start."""
    KeyRing(db, load_master_key(tmp_path / "a", environ={}), rotate_after=3600, overlap=60).ensure_current()
    other = KeyRing(db, load_master_key(tmp_path / "b", environ={}), rotate_after=3600, overlap=60)
    with pytest.raises(ConfigError) as exc:
        other.refresh()
    assert exc.value.code == "master_key_mismatch"


def test_rotation_keeps_old_key_verifying_during_overlap(db, tmp_path):
    """After rotation the new key signs; the old one still verifies and stays in the JWKS."""
    ring = KeyRing(db, load_master_key(tmp_path, environ={}), rotate_after=3600, overlap=600)
    old = ring.ensure_current()
    new = ring.create()
    assert ring.signing_key().kid == new.kid
    assert ring.verification_key(old.kid) is not None
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old.kid, new.kid}
    assert all("d" not in k for k in ring.jwks()["keys"])  # never a private member


def test_master_key_file_must_be_private(tmp_path):
    """A group- or world-readable master.key is refused."""
    load_master_key(tmp_path, environ={})
    (tmp_path / "master.key").chmod(0o644)
    with pytest.raises(ConfigError):
        load_master_key(tmp_path, environ={})


def test_master_key_from_environment_must_be_32_bytes(tmp_path):
    """TETHER_MASTER_KEY must decode to 32 bytes."""
    with pytest.raises(ConfigError) as exc:
        load_master_key(tmp_path, environ={"TETHER_MASTER_KEY": "c2hvcnQ"})
    assert exc.value.details["field"] == "TETHER_MASTER_KEY"

"""One JOSE path: every JWS/JWT/JWK the broker and SDK handle goes through ``tether.identity.jwt``."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec

import tether
from tether.identity.jwt import public_jwk, sign_jwt
from tether.identity.keys import KeyRing, load_master_key
from tether.store.db import Database

SRC = Path(tether.__file__).parent
# Third-party JOSE libraries: a second parser beside ours is how two parsers end up reading
# two different tokens out of the same bytes.
OTHER_JOSE = {"jwt", "jose", "joserfc", "jwcrypto", "authlib", "josepy"}


def test_no_module_imports_another_jose_library():
    """No module under src/tether imports PyJWT, python-jose, joserfc, jwcrypto or authlib."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(SRC)}:{node.lineno} {n}" for n in names if n.split(".")[0] in OTHER_JOSE
            ]
    assert offenders == []


def test_published_signing_key_verifies_with_an_independent_library(tmp_path):
    """A JWK from the key ring verifies, in PyJWT, a token signed by `sign_jwt` with that key."""
    db = Database(f"sqlite:///{tmp_path}/t.db")
    try:
        db.migrate()
        ring = KeyRing(db, load_master_key(tmp_path, environ={}), rotate_after=3600, overlap=60)
        key = ring.ensure_current()
        jwk = key.public_jwk
        assert (
            jwk["kty"] == "EC" and jwk["crv"] == "P-256" and jwk["alg"] == "ES256" and jwk["kid"] == key.kid
        )
        token = sign_jwt({"sub": "x", "aud": "a"}, key.private_key, alg="ES256", kid=key.kid, typ="JWT")
        public = pyjwt.PyJWK.from_json(json.dumps(jwk)).key
        assert pyjwt.decode(token, public, algorithms=["ES256"], audience="a")["sub"] == "x"
    finally:
        db.dispose()


def test_public_jwk_coordinates_are_full_length():
    """x and y are always 32 bytes for P-256, even when a coordinate has leading zero bytes."""
    for _ in range(64):
        jwk = public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), "k")
        assert len(jwk["x"]) == len(jwk["y"]) == 43  # 32 bytes, base64url without padding

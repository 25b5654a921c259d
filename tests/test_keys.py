"""Which key may verify which algorithm, and what a JWKS may contribute (no server needed)."""

from __future__ import annotations

import pytest

from service.auth.keys import VerificationKey, fits, parse_jwks
from service.auth.minting import generate_key, public_jwk


@pytest.mark.parametrize(("algorithm", "size", "ok"), [
    ("HS256", 32, True), ("HS256", 31, False), ("HS384", 47, False), ("HS384", 48, True),
    ("HS512", 63, False), ("HS512", 64, True),
])
def test_hmac_keys_must_be_as_long_as_the_hash(algorithm: str, size: int, ok: bool) -> None:
    """RFC 7518 §3.2: an HMAC key shorter than the hash output is not used."""
    assert fits(algorithm, b"k" * size) is ok


def test_each_key_type_fits_only_its_algorithms() -> None:
    """RSA keys verify RS*/PS*, a P-256 key only ES256, Ed25519 only EdDSA, and no public key
    is ever an HMAC key (HS256 'signed' with a public key is not checked against it)."""
    rsa = generate_key("RS256").public_key()
    p256 = generate_key("ES256").public_key()
    ed = generate_key("EdDSA").public_key()
    assert fits("RS256", rsa) and fits("PS512", rsa) and not fits("ES256", rsa)
    assert fits("ES256", p256) and not fits("ES384", p256) and not fits("RS256", p256)
    assert fits("EdDSA", ed) and not fits("ES256", ed)
    for key in (rsa, p256, ed):
        assert not fits("HS256", key)
    assert not fits("none", b"k" * 64)


def test_jwks_skips_symmetric_and_encryption_keys() -> None:
    """A public key set contributes signing keys only: ``oct`` and ``use: enc`` keys are
    dropped, malformed entries ignored."""
    good = public_jwk(generate_key("ES256"), "ES256", "sig-1")
    enc = {**public_jwk(generate_key("ES256"), "ES256", "enc-1"), "use": "enc"}
    oct_key = {"kty": "oct", "kid": "oct-1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}
    keys = parse_jwks({"keys": [good, enc, oct_key, {"kty": "RSA", "kid": "broken"}, "x"]},
                      "https://idp.example.com/")
    assert set(keys) == {"sig-1"}
    assert parse_jwks({"keys": "nope"}, "i") == {}


def test_a_jwk_alg_pins_the_algorithm() -> None:
    """A JWK that names ``alg: RS256`` is not used for PS256 even though the key type fits."""
    jwk = public_jwk(generate_key("RS256"), "RS256", "r1")
    key = parse_jwks({"keys": [jwk]}, "i")["r1"]
    assert key.allows("RS256") and not key.allows("PS256")
    unpinned = VerificationKey(key.key, "pem")
    assert unpinned.allows("PS256")

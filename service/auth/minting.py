"""Making tokens and key pairs, for development and tests (the service itself only verifies).

HS tokens are signed with the configured secret; RS256/ES256/EdDSA tokens with a generated
private key whose public half is published as PEM and as a JWKS, as an identity provider
would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from service.config import Settings

ASYMMETRIC: Final = ("RS256", "ES256", "EdDSA")
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def mint(
    settings: Settings,
    user_id: str,
    ttl: int = 3600,
    *,
    now: float | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """An HS256 token this service accepts for ``user_id``, with its issuer and audience."""
    if settings.jwt_secret is None:
        raise ValueError("no SIGNAL_JWT_SECRET to sign HS256 tokens with")
    return sign(token_claims(settings, user_id, ttl, now=now, claims=claims),
                settings.jwt_secret.reveal(), "HS256")


def token_claims(settings: Settings | None, user_id: str, ttl: int, *, now: float | None = None,
                 claims: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``sub``/``iat``/``exp``, the first configured issuer and audience, then ``claims``."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": issued + ttl}
    if settings is not None and settings.jwt_issuers:
        payload["iss"] = settings.jwt_issuers[0]
    if settings is not None and settings.jwt_audiences:
        payload["aud"] = settings.jwt_audiences[0]
    payload.update(claims or {})
    return payload


def sign(claims: Mapping[str, Any], key: str | bytes | PrivateKey, algorithm: str, *,
         kid: str | None = None, headers: Mapping[str, Any] | None = None) -> str:
    """Encode and sign ``claims``."""
    all_headers = dict(headers or {})
    if kid is not None:
        all_headers["kid"] = kid
    return jwt.encode(dict(claims), key, algorithm=algorithm, headers=all_headers or None)


def generate_key(algorithm: str) -> PrivateKey:
    """A new private key for RS256 (2048-bit RSA), ES256 (P-256) or EdDSA (Ed25519)."""
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"cannot generate a key for {algorithm}; choose one of {ASYMMETRIC}")


def private_pem(key: PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key: PrivateKey | PublicKeyTypes) -> str:
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_jwk(key: PrivateKey, algorithm: str, kid: str | None = None) -> dict[str, Any]:
    """The public JWK of ``key``, with ``kid`` (default: its RFC 7638 thumbprint),
    ``alg`` and ``use: sig``."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k not in ("key_ops", "alg", "use", "kid")}
    return {**jwk, "kid": kid or thumbprint(jwk), "alg": algorithm, "use": "sig"}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"),
                "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"),
                           sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_private_key(pem: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                            ed25519.Ed25519PrivateKey)):
        raise ValueError("unsupported private key type")
    return key

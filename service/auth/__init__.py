"""Who a client is, and the credentials the service hands out.

- :mod:`service.auth.verifier`: ``TokenVerifier.verify(token) -> Identity``;
- :mod:`service.auth.keys`: which key for which algorithm; the per-issuer JWKS cache;
- :mod:`service.auth.denylist`: revoked ``jti``s;
- :mod:`service.auth.expiry`: per-connection token timers (warn before ``exp``, close at it);
- :mod:`service.auth.turn`: the ICE servers handed out, TURN credentials that expire with
  the token;
- :mod:`service.auth.minting`: tokens and key pairs for development and tests;
- :mod:`service.auth.cli`: ``scripts/mint_token.py`` (run, not re-exported: a command line
  is not part of what the rest of the service uses).

This package is the only place that imports ``jwt``.
"""

from __future__ import annotations

from service.auth.expiry import ExpiryTimers
from service.auth.minting import generate_key, mint, public_jwk, sign
from service.auth.turn import IceServers
from service.auth.verifier import Identity, TokenVerifier, extract_token

__all__ = ["ExpiryTimers", "IceServers", "Identity", "TokenVerifier", "extract_token",
           "generate_key", "mint", "public_jwk", "sign"]

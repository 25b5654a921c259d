"""Bearer tokens: verification (``TokenVerifier``), key sources, and minting for development.

This package is the only place that imports ``jwt``.
"""

from __future__ import annotations

from service.auth.minting import mint
from service.auth.verifier import Identity, TokenVerifier, extract_token

__all__ = ["Identity", "TokenVerifier", "extract_token", "mint"]

"""Verification keys: which algorithm may use which key, and the JWKS cache.

A token's ``alg`` header never chooses a key type: a key is used only for the algorithms its
own type allows (:func:`fits`), intersected with ``SIGNAL_JWT_ALGORITHMS``, and with the JWK's
own ``alg`` when it names one. So HS256 "signed" with a public key is never checked against
that key.

JWKS keys are cached per issuer, and a token is checked only against its own issuer's set.
Fetches are asynchronous (:mod:`service.outbound`: a pool of their own, so a hung webhook
receiver never delays them), at most once per ``refresh_interval`` whatever the reason
(expired cache, unknown ``kid``), one fetch at a time per issuer; a failed fetch keeps the
previous keys and is tried again after a short backoff (0.5 s, doubling up to the refresh
interval), so a service that started before its IdP has keys within a second of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from service.config import JwksEndpoint
from service.outbound import OutboundError
from service.telemetry import log_event

HMAC_MIN_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
#: the first wait before a failed fetch is tried again; doubled up to the refresh interval
RETRY_FIRST: Final = 0.5


def fits(algorithm: str, key: object) -> bool:
    """Whether ``key``'s own type allows ``algorithm`` (HMAC keys: at least the hash size,
    RFC 7518 §3.2; EC keys: the algorithm's own curve)."""
    if algorithm in HMAC_MIN_BYTES:
        return isinstance(key, bytes) and len(key) >= HMAC_MIN_BYTES[algorithm]
    if algorithm in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == EC_CURVES[
            algorithm]
    if algorithm == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key and where it came from (for logs; never the key itself)."""

    key: Any
    source: str
    kid: str | None = None
    #: the JWK's own "alg", when it pins one
    algorithm: str | None = None

    def allows(self, algorithm: str) -> bool:
        return fits(algorithm, self.key) and self.algorithm in (None, algorithm)


Fetch = Callable[[str, float], Awaitable[Any]]


def parse_jwks(data: Mapping[str, Any], issuer: str) -> dict[str | None, VerificationKey]:
    """Signing keys of a JWKS by ``kid``. Symmetric (``oct``) keys and encryption keys are
    skipped: a public key set has no business holding them."""
    keys: dict[str | None, VerificationKey] = {}
    for jwk in data.get("keys", []) if isinstance(data.get("keys"), list) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or jwk.get("use") not in (
                None, "sig"):
            continue
        try:
            parsed = PyJWK(jwk)
        except PyJWTError:
            continue
        kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
        alg = jwk.get("alg") if isinstance(jwk.get("alg"), str) else None
        keys[kid] = VerificationKey(parsed.key, f"jwks:{issuer}", kid, alg)
    return keys


class JwksSource:
    """The cached key set of one issuer's JWKS endpoint."""

    def __init__(self, endpoint: JwksEndpoint, *, ttl: float, refresh_interval: float,
                 timeout: float, logger: logging.Logger, fetch: Fetch,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = endpoint.issuer
        self.url = endpoint.url
        self._ttl = ttl
        self._interval = refresh_interval
        self._timeout = timeout
        self._log = logger
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str | None, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        #: seconds from the last attempt to the next one allowed
        self._wait = refresh_interval
        #: the last fetch failed (a kid it did not find may be there)
        self.failing = False
        self._lock = asyncio.Lock()
        self.fetches = 0
        #: told the outcome of every fetch (metrics)
        self.on_fetch: Callable[[bool], None] = lambda ok: None

    async def keys_for(self, kid: str | None) -> list[VerificationKey]:
        """The key named ``kid`` (every key when the token names none), refreshing the set
        when it is stale or lacks ``kid``, within the rate limit."""
        stale = self._fetched_at is None or self._clock() - self._fetched_at > self._ttl
        if stale or (kid is not None and kid not in self._keys):
            await self.refresh()
        if kid is None:
            return list(self._keys.values())
        key = self._keys.get(kid)
        return [key] if key is not None else []

    @property
    def loaded(self) -> bool:
        """A fetch has succeeded (the set may still be empty)."""
        return self._fetched_at is not None

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def retry_in(self) -> float:
        """Seconds until the next fetch is allowed."""
        if self._attempted_at is None:
            return 0.0
        return max(0.0, self._attempted_at + self._wait - self._clock())

    async def refresh(self) -> None:
        """Fetch the set unless the last attempt was too recent: ``refresh_interval`` after
        a success, a backoff after a failure."""
        async with self._lock:  # one fetch at a time; waiters reuse its result
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._wait:
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                data = await self._fetch(self.url, self._timeout)
                if not isinstance(data, dict):
                    raise ValueError("JWKS is not a JSON object")
                keys = parse_jwks(data, self.issuer)
            except (OutboundError, PyJWTError, OSError, ValueError) as exc:
                self._wait = min(self._wait * 2 if self.failing else RETRY_FIRST,
                                 self._interval)
                self.failing = True
                self.on_fetch(False)
                log_event(self._log, "jwks_fetch_failed", logging.WARNING, issuer=self.issuer,
                          url=self.url, error_type=type(exc).__name__,
                          kept_keys=len(self._keys), retry_in=self._wait)
                return
            self._keys = keys
            self._fetched_at = self._clock()
            self.failing, self._wait = False, self._interval
            self.on_fetch(True)
            log_event(self._log, "jwks_fetched", issuer=self.issuer, url=self.url,
                      kids=sorted(str(k) for k in keys))

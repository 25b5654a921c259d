"""``TokenVerifier.verify(token) -> Identity``: every rule a bearer token must pass.

In order, cheapest first: size (before any parsing), header (``alg`` on the allow-list, no
``crit``), key selection (the token's issuer's JWKS when it has one, else the static keys;
never a key the header points at: ``jku``/``x5u``/``jwk``/``x5c`` are ignored), signature,
claims (``exp`` required; ``iss``/``aud`` exact; ``nbf``/``iat`` with leeway; lifetime cap),
the user claim, and the ``jti`` deny-list. Failures map to reasons a client can act on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options

from service.auth.denylist import DenyList
from service.auth.keys import HMAC_MIN_BYTES, Fetch, JwksSource, VerificationKey
from service.config import Settings
from service.errors import (
    InvalidPayload,
    KeysUnavailable,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    TokenNotYetValid,
    TokenRevoked,
)
from service.outbound import Outbound
from service.protocol import parse_user_id

#: how often the JWKS loop looks again when every issuer has keys
KEYS_CHECK_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection belongs to, as proven by its token."""

    user_id: str
    expires_at: int
    issuer: str | None = None
    jti: str | None = None
    #: the token's ``iat`` (epoch seconds), if it has one: a revocation of the user (the
    #: server API's ``revoke``) refuses tokens issued before it
    issued_at: float | None = None


class TokenVerifier:
    """Verifies bearer tokens against the configured keys and claim rules."""

    def __init__(self, settings: Settings, logger: logging.Logger | None = None, *,
                 fetch: Fetch | None = None, clock: Callable[[], float] = time.time) -> None:
        self._log = logger or logging.getLogger("signaling")
        #: JWKS fetches: bounded apart from other outbound requests (one per issuer at a
        #: time already, see JwksSource)
        self.outbound = Outbound("jwks", concurrency=max(1, len(settings.jwt_jwks)))
        if fetch is None:
            fetch = self._fetch
        self._clock = clock
        self._algorithms = frozenset(settings.jwt_algorithms)
        self._secrets = [VerificationKey(s.reveal().encode(), name) for s, name in (
            (settings.jwt_secret, "secret"), (settings.jwt_previous_secret, "previous_secret"),
        ) if s is not None]
        self._public_keys = [VerificationKey(load_pem_public_key(pem.encode()), f"public_key[{i}]")
                             for i, pem in enumerate(settings.jwt_public_keys)]
        self.jwks = {e.issuer: JwksSource(e, ttl=settings.jwks_cache_ttl,
                                          refresh_interval=settings.jwks_refresh_interval,
                                          timeout=settings.jwks_timeout, logger=self._log,
                                          fetch=fetch)
                     for e in settings.jwt_jwks}
        self._issuers = settings.jwt_issuers or None
        self._audiences = settings.jwt_audiences or None
        self._leeway = settings.jwt_leeway
        self._user_claim = settings.jwt_user_claim
        #: issuer -> prefix of its user ids (SIGNAL_JWT_USER_IDS), when ids are per issuer
        self._prefixes = dict(settings.jwt_user_id_prefixes)
        self._max_lifetime = settings.jwt_max_lifetime
        self._max_bytes = settings.jwt_max_token_bytes
        self.leeway = settings.jwt_leeway
        self.denylist = (DenyList(settings.jwt_denylist_file, self._log)
                         if settings.jwt_denylist_file else None)
        required = ["exp", self._user_claim]
        if self._issuers:
            required.append("iss")
        if self._audiences:
            required.append("aud")
        self._options: Options = {"require": required, "verify_aud": bool(self._audiences)}

    async def _fetch(self, url: str, within: float) -> Any:
        return await self.outbound.get_json(url, within=within)

    async def keep_fetched(self) -> float:
        """Fetch each JWKS that has not loaded, or whose last fetch failed, when its backoff
        allows; the seconds until one may be tried again (one step of a supervised loop,
        from start-up: a service started before its IdP has keys soon after the IdP is up).
        """
        def wanting(source: JwksSource) -> bool:
            return not source.loaded or source.failing or not source.key_count

        for source in self.jwks.values():
            if wanting(source):
                await source.refresh()
        waits = [source.retry_in() for source in self.jwks.values() if wanting(source)]
        return max(0.05, min(waits)) if waits else KEYS_CHECK_SECONDS

    @property
    def keys_ready(self) -> bool:
        """Every JWKS issuer has keys (for readiness)."""
        return all(source.loaded and source.key_count for source in self.jwks.values())

    def is_revoked(self, identity: Identity) -> bool:
        """Whether ``identity``'s token is on the deny-list now."""
        return self.denylist is not None and identity.jti in self.denylist

    async def verify(self, token: str) -> Identity:
        """Return the token's identity or raise an :class:`AuthError` subclass."""
        if not token or len(token.encode("utf-8", "replace")) > self._max_bytes:
            raise TokenInvalid("token is empty or too large")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenInvalid("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise TokenInvalid("algorithm not allowed")
        if "crit" in header:
            raise TokenInvalid("critical header extensions are not supported")
        if kid is not None and not isinstance(kid, str):
            raise TokenInvalid("kid must be a string")
        keys = await self._keys(alg, kid, unverified.get("iss"))
        claims = self._decode(token, alg, keys)
        return self._identity(claims)

    async def _keys(self, alg: str, kid: str | None, issuer: object) -> list[VerificationKey]:
        if isinstance(issuer, str) and issuer in self.jwks:
            # an issuer with a JWKS is verified with its own keys and nothing else
            source = self.jwks[issuer]
            candidates = await source.keys_for(kid)
            if not candidates and (not source.loaded or source.failing):
                # not the token's fault: its issuer's keys cannot be had now (retry)
                raise KeysUnavailable("the token's issuer has no keys yet")
        elif alg in HMAC_MIN_BYTES:
            candidates = self._secrets
        else:
            candidates = self._public_keys
        keys = [k for k in candidates if k.allows(alg)]
        if not keys:
            raise TokenInvalid("no key for this token")
        return keys

    def _decode(self, token: str, alg: str, keys: list[VerificationKey]) -> dict[str, Any]:
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key.key, algorithms=[alg], issuer=self._issuers,
                    audience=self._audiences, leeway=self._leeway, options=self._options)
            except jwt.InvalidSignatureError:
                continue  # try the next key (previous secret, another PEM)
            except jwt.ExpiredSignatureError:
                raise TokenExpired("token has expired") from None
            except jwt.ImmatureSignatureError:
                raise TokenNotYetValid("token is not valid yet") from None
            except jwt.InvalidTokenError as exc:
                raise TokenInvalid(type(exc).__name__) from None
            return claims
        raise TokenInvalid("signature does not verify")

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        for name in ("exp", "iat", "nbf"):
            # RFC 7519 NumericDate; PyJWT also takes "1795715075" (a string) and True
            value = claims.get(name)
            if (name == "exp" or value is not None) and (
                    not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise TokenInvalid(f"{name} is not a number")
        exp = claims["exp"]
        iat = claims.get("iat")
        start = iat if iat is not None else self._clock()
        if exp - start > self._max_lifetime + self._leeway:
            raise TokenInvalid("token lifetime is over the maximum")
        user = claims[self._user_claim]
        if not isinstance(user, str):
            raise TokenInvalid("user claim is not a string")
        if self._prefixes:
            # the issuer was checked against SIGNAL_JWT_ISSUER, each of which has a prefix
            user = self._prefixes[claims["iss"]] + user
        try:
            user_id = parse_user_id(user, self._user_claim)
        except InvalidPayload:
            raise TokenInvalid("user claim is not a usable user id") from None
        jti = claims.get("jti") if isinstance(claims.get("jti"), str) else None
        iat = claims.get("iat")
        identity = Identity(user_id=user_id, expires_at=int(exp),
                            issuer=claims.get("iss") if isinstance(claims.get("iss"), str)
                            else None, jti=jti,
                            issued_at=float(iat) if isinstance(iat, (int, float))
                            and not isinstance(iat, bool) else None)
        if self.is_revoked(identity):
            raise TokenRevoked("token has been revoked")
        return identity


def extract_token(auth: object, authorization: str | None) -> str:
    """The bearer token from the Socket.IO ``auth`` payload ``{"token": ...}`` or, failing
    that, an ``Authorization: Bearer ...`` header. Raises :class:`AuthError`."""
    if auth is not None and auth != {}:
        if not isinstance(auth, Mapping):
            raise TokenInvalid("auth payload must be an object")
        if "token" in auth:
            token = auth["token"]
            if not isinstance(token, str):
                raise TokenInvalid("auth.token must be a string")
            return token.strip()
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    raise TokenMissing("no bearer token")

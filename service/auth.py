"""Token verification: ``TokenVerifier.verify(token) -> Identity``. The only module that
imports ``jwt``.

The algorithm list and the required claims are fixed here, never read from the token.
Failures map to reasons a client can act on: ``token_expired`` means "refresh and retry",
``token_invalid`` means "this token will never work".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from jwt.types import Options

from service.config import Settings
from service.errors import (
    AuthError,
    InvalidPayload,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    TokenNotYetValid,
)
from service.protocol import parse_user_id

ALGORITHMS: Final = ("HS256",)
#: refused before any parsing or crypto work; real access tokens are well under 2 KiB
MAX_TOKEN_LENGTH: Final = 8192


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection belongs to, as proven by its token."""

    user_id: str
    expires_at: int


class TokenVerifier:
    """Verifies bearer tokens against the configured secret, issuer, audience and leeway."""

    def __init__(self, settings: Settings) -> None:
        self._key = settings.jwt_secret.reveal()
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway
        required = ["exp", "sub"]
        if self._issuer is not None:
            required.append("iss")
        if self._audience is not None:
            required.append("aud")
        self._options: Options = {
            "require": required,
            # without a configured audience, a token's own "aud" is not ours to judge
            "verify_aud": self._audience is not None,
        }

    def verify(self, token: str) -> Identity:
        """Return the token's identity or raise an :class:`AuthError` subclass."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid("token is empty or too long")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=list(ALGORITHMS),
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenNotYetValid("token is not valid yet") from None
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(type(exc).__name__) from None
        if not isinstance(claims["sub"], str):
            raise TokenInvalid("sub is not a string")
        try:
            user_id = parse_user_id(claims["sub"], "sub")
        except InvalidPayload:
            raise TokenInvalid("sub is not a usable user id") from None
        return Identity(user_id=user_id, expires_at=int(claims["exp"]))


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


def mint(
    settings: Settings,
    user_id: str,
    ttl: int = 3600,
    *,
    now: float | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """A token this service accepts for ``user_id`` (for development and tests)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": issued + ttl}
    if settings.jwt_issuer is not None:
        payload["iss"] = settings.jwt_issuer
    if settings.jwt_audience is not None:
        payload["aud"] = settings.jwt_audience
    payload.update(claims or {})
    return jwt.encode(payload, settings.jwt_secret.reveal(), algorithm=ALGORITHMS[0])


__all__ = ["ALGORITHMS", "AuthError", "Identity", "TokenVerifier", "extract_token", "mint"]

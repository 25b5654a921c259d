"""Settings: read once from the environment (prefix ``SIGNAL_``) and an optional ``.env`` file.

``Settings.from_env()`` collects every problem and raises one :class:`ConfigError` naming
each variable, so an operator fixes them all in one go. Real environment variables win over
the ``.env`` file. Secrets are wrapped in :class:`Secret` and never appear in a repr.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

from service.errors import ConfigError

PREFIX = "SIGNAL_"
MIN_SECRET_BYTES = 32
MAX_LEEWAY_SECONDS = 300
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

T = TypeVar("T")
_NO_ORIGINS: tuple[str, ...] = ()


class Secret:
    """A string that shows as ``'**********'`` in reprs, logs and tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call this only where it is used."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service is configured with. Build it with :meth:`from_env` in
    production, or directly (keyword arguments) in tests."""

    jwt_secret: Secret
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: int = 5
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = _check_secret(self.jwt_secret.reveal(), f"{PREFIX}JWT_SECRET")
        if problems:
            raise ConfigError([problems])

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | Path | None = ".env",
    ) -> Settings:
        """Read ``SIGNAL_*`` variables from ``environ`` (default ``os.environ``), falling back to
        ``env_file`` when it exists (``SIGNAL_ENV_FILE`` names another file). Unknown
        ``SIGNAL_*`` names are errors: a typo must not silently leave a default in place."""
        env = dict(os.environ if environ is None else environ)
        env_file = env.get(f"{PREFIX}ENV_FILE", env_file)
        merged: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        merged.update(env)
        return _parse({k: v for k, v in merged.items() if k.startswith(PREFIX)})


KNOWN = {
    "JWT_SECRET",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_LEEWAY",
    "CORS_ORIGINS",
    "LOG_LEVEL",
    "ENV_FILE",
}


def _parse(values: Mapping[str, str]) -> Settings:
    problems: list[str] = []

    def field(name: str, parse: Callable[[str, str], T], default: T) -> T:
        var = PREFIX + name
        raw = values.get(var)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip(), var)
        except ValueError as exc:
            problems.append(str(exc))
            return default

    for var in sorted(values):
        if var[len(PREFIX) :] not in KNOWN:
            problems.append(f"{var} is not a setting of this service (typo?).")

    secret = values.get(f"{PREFIX}JWT_SECRET", "").strip()
    if not secret:
        problems.append(
            f"{PREFIX}JWT_SECRET is missing, and has no default "
            "(scripts/run writes a development secret into .env for you)."
        )
    elif msg := _check_secret(secret, f"{PREFIX}JWT_SECRET"):
        problems.append(msg)

    kwargs: dict[str, Any] = {
        "jwt_issuer": field("JWT_ISSUER", _text, None),
        "jwt_audience": field("JWT_AUDIENCE", _text, None),
        "jwt_leeway": field("JWT_LEEWAY", _leeway, 5),
        "cors_origins": field("CORS_ORIGINS", _origins, _NO_ORIGINS),
        "log_level": field("LOG_LEVEL", _log_level, "INFO"),
    }
    if problems:
        raise ConfigError(problems)
    return Settings(jwt_secret=Secret(secret), **kwargs)


def _check_secret(secret: str, var: str) -> str | None:
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        return (
            f"{var} is too short: {size} bytes, needs at least {MIN_SECRET_BYTES} "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')."
        )
    return None


def _text(raw: str, var: str) -> str:
    if any(ord(c) < 32 for c in raw):
        raise ValueError(f"{var} contains control characters.")
    return raw


def _leeway(raw: str, var: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_LEEWAY_SECONDS:
        raise ValueError(
            f"{var} must be a whole number of seconds from 0 to {MAX_LEEWAY_SECONDS}, got {raw!r}."
        )
    return value


def _origins(raw: str, var: str) -> tuple[str, ...]:
    origins: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item == "*":
            origins.append(item)
            continue
        parts = urlsplit(item)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("",)
            or parts.query
            or parts.fragment
            or parts.username
        ):
            raise ValueError(
                f"{var} entries must look like https://app.example.com[:port] "
                f"(scheme and host, no path), got {item!r}."
            )
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(origins)


def _log_level(raw: str, var: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{var} must be one of {', '.join(LOG_LEVELS)}, got {raw!r}.")
    return level

"""Settings: read once from the environment (prefix ``SIGNAL_``) and an optional ``.env`` file.

``Settings.from_env()`` collects every problem and raises one :class:`ConfigError` naming
each variable, so an operator fixes them all in one go. Real environment variables win over
the ``.env`` file. Secrets are wrapped in :class:`Secret` and never appear in a repr.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from dotenv import dotenv_values

from service.errors import ConfigError
from service.limits import Rate, parse_networks

PREFIX: Final = "SIGNAL_"
MIN_SECRET_BYTES: Final = 32
MAX_LEEWAY_SECONDS: Final = 300
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
#: every algorithm the service can verify; ``none`` is never one of them
SUPPORTED_ALGORITHMS: Final = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
)
DEFAULT_ALGORITHMS: Final[tuple[str, ...]] = ("HS256", "RS256", "ES256", "EdDSA")

T = TypeVar("T")


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
class JwksEndpoint:
    """A JWKS URL and the one issuer whose tokens its keys may verify."""

    issuer: str
    url: str


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service is configured with. Build it with :meth:`from_env` in
    production, or directly (keyword arguments) in tests; both are validated the same way.

    Key sources: HS secrets (current and previous), PEM public keys, and JWKS endpoints, each
    bound to one issuer. At least one source is required.
    """

    jwt_secret: Secret | None = None
    jwt_previous_secret: Secret | None = None
    jwt_public_keys: tuple[str, ...] = ()
    jwt_jwks: tuple[JwksEndpoint, ...] = ()
    jwt_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwt_issuers: tuple[str, ...] = ()
    jwt_audiences: tuple[str, ...] = ()
    jwt_leeway: int = 5
    jwt_user_claim: str = "sub"
    jwt_max_lifetime: int = 86400
    jwt_max_token_bytes: int = 8192
    jwt_denylist_file: Path | None = None
    jwks_cache_ttl: int = 300
    jwks_refresh_interval: int = 30
    jwks_timeout: float = 5.0
    token_expiry_warning: int = 60
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    # ---- limits (see README "Limits") ----
    max_message_bytes: int = 65536
    limit_relays: Rate = Rate(30, 120)
    limit_user_relays: Rate = Rate(60, 240)
    limit_rooms: Rate = Rate(2, 10)
    limit_refreshes: Rate = Rate(0.2, 3)
    limit_other: Rate = Rate(2, 10)
    limit_strikes: Rate = Rate(1, 50)
    limit_ip_connects: Rate = Rate(5, 30)
    limit_ip_auth_failures: Rate = Rate(0.2, 10)
    max_connections_per_user: int = 10
    auth_timeout: float = 5.0
    max_queued_messages: int = 512
    send_timeout: float = 10.0
    trusted_proxies: tuple[str, ...] = ()
    # ---- scale-out (see README "Deployment") ----
    redis_url: Secret | None = None
    redis_secret: Secret | None = None
    redis_channel: str = "signaling"
    redis_max_connections: int = 10
    node_ttl: float = 5.0
    sticky_sessions: bool = False
    shutdown_timeout: float = 10.0
    # ---- calls (see README "Demo") ----
    demo: bool = False
    demo_tokens: bool = False
    ice_servers: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        problems = _invariants(self)
        if problems:
            raise ConfigError(problems)

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


class _Defaults:
    """Default values of the limit settings, read from the dataclass fields."""

    def __getattr__(self, name: str) -> Any:
        return Settings.__dataclass_fields__[name].default


_DEFAULTS = _Defaults()

KNOWN: Final = frozenset({
    "JWT_SECRET", "JWT_PREVIOUS_SECRET", "JWT_PUBLIC_KEY", "JWT_JWKS_URL", "JWT_ALGORITHMS",
    "JWT_ISSUER", "JWT_AUDIENCE", "JWT_LEEWAY", "JWT_USER_CLAIM", "JWT_MAX_LIFETIME",
    "JWT_MAX_TOKEN_BYTES", "JWT_DENYLIST_FILE", "JWKS_CACHE_TTL", "JWKS_REFRESH_INTERVAL",
    "JWKS_TIMEOUT", "TOKEN_EXPIRY_WARNING", "CORS_ORIGINS", "LOG_LEVEL", "ENV_FILE",
    "MAX_MESSAGE_BYTES", "LIMIT_RELAYS", "LIMIT_USER_RELAYS", "LIMIT_ROOMS", "LIMIT_REFRESHES",
    "LIMIT_OTHER", "LIMIT_STRIKES", "LIMIT_IP_CONNECTS", "LIMIT_IP_AUTH_FAILURES",
    "MAX_CONNECTIONS_PER_USER", "AUTH_TIMEOUT", "MAX_QUEUED_MESSAGES", "SEND_TIMEOUT",
    "TRUSTED_PROXIES", "REDIS_URL", "REDIS_SECRET", "REDIS_CHANNEL", "REDIS_MAX_CONNECTIONS",
    "NODE_TTL", "STICKY_SESSIONS", "SHUTDOWN_TIMEOUT", "DEMO", "DEMO_TOKENS", "ICE_SERVERS",
})


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
        if var[len(PREFIX):] not in KNOWN:
            problems.append(f"{var} is not a setting of this service (typo?).")

    no_text: tuple[str, ...] = ()
    no_jwks: tuple[JwksEndpoint, ...] = ()
    no_servers: tuple[dict[str, Any], ...] = ()
    issuers = field("JWT_ISSUER", _text_list, no_text)
    kwargs: dict[str, Any] = {
        "jwt_secret": field("JWT_SECRET", _secret, None),
        "jwt_previous_secret": field("JWT_PREVIOUS_SECRET", _secret, None),
        "jwt_public_keys": field("JWT_PUBLIC_KEY", _public_keys, no_text),
        "jwt_jwks": field("JWT_JWKS_URL", lambda raw, var: _jwks(raw, var, issuers), no_jwks),
        "jwt_algorithms": field("JWT_ALGORITHMS", _algorithms, tuple(DEFAULT_ALGORITHMS)),
        "jwt_issuers": issuers,
        "jwt_audiences": field("JWT_AUDIENCE", _text_list, no_text),
        "jwt_leeway": field("JWT_LEEWAY", _int(0, MAX_LEEWAY_SECONDS), 5),
        "jwt_user_claim": field("JWT_USER_CLAIM", _text, "sub"),
        "jwt_max_lifetime": field("JWT_MAX_LIFETIME", _int(60, 366 * 86400), 86400),
        "jwt_max_token_bytes": field("JWT_MAX_TOKEN_BYTES", _int(256, 65536), 8192),
        "jwt_denylist_file": field("JWT_DENYLIST_FILE", _existing_file, None),
        "jwks_cache_ttl": field("JWKS_CACHE_TTL", _int(10, 86400), 300),
        "jwks_refresh_interval": field("JWKS_REFRESH_INTERVAL", _int(1, 3600), 30),
        "jwks_timeout": float(field("JWKS_TIMEOUT", _int(1, 60), 5)),
        "token_expiry_warning": field("TOKEN_EXPIRY_WARNING", _int(0, 3600), 60),
        "cors_origins": field("CORS_ORIGINS", _origins, no_text),
        "log_level": field("LOG_LEVEL", _log_level, "INFO"),
        "max_message_bytes": field("MAX_MESSAGE_BYTES", _int(1024, 1_048_576), 65536),
        "max_connections_per_user": field("MAX_CONNECTIONS_PER_USER", _int(0, 100_000), 10),
        "auth_timeout": float(field("AUTH_TIMEOUT", _int(1, 300), 5)),
        "max_queued_messages": field("MAX_QUEUED_MESSAGES", _int(16, 1_000_000), 512),
        "send_timeout": float(field("SEND_TIMEOUT", _int(1, 300), 10)),
        "trusted_proxies": field("TRUSTED_PROXIES", _networks, no_text),
        "redis_url": field("REDIS_URL", _redis_url, None),
        "redis_secret": field("REDIS_SECRET", _secret, None),
        "redis_channel": field("REDIS_CHANNEL", _channel, "signaling"),
        "redis_max_connections": field("REDIS_MAX_CONNECTIONS", _int(2, 1000), 10),
        "node_ttl": float(field("NODE_TTL", _int(2, 300), 5)),
        "sticky_sessions": field("STICKY_SESSIONS", _bool, False),
        "shutdown_timeout": float(field("SHUTDOWN_TIMEOUT", _int(1, 600), 10)),
        "demo": field("DEMO", _bool, False),
        "demo_tokens": field("DEMO_TOKENS", _bool, False),
        "ice_servers": field("ICE_SERVERS", _ice_servers, no_servers),
    }
    for name in ("RELAYS", "USER_RELAYS", "ROOMS", "REFRESHES", "OTHER", "STRIKES",
                 "IP_CONNECTS", "IP_AUTH_FAILURES"):
        attr = f"limit_{name.lower()}"
        kwargs[attr] = field(f"LIMIT_{name}", _rate, getattr(_DEFAULTS, attr))
    problems.extend(_invariants(SimpleNamespace(**kwargs)))
    if problems:
        raise ConfigError(problems)
    return Settings(**kwargs)


def _invariants(s: Any) -> list[str]:
    """Rules that involve several settings; shared by ``from_env`` and direct construction."""
    problems: list[str] = []
    for var, secret in (("JWT_SECRET", s.jwt_secret), ("JWT_PREVIOUS_SECRET",
                                                       s.jwt_previous_secret)):
        if secret is not None and (msg := _check_secret(secret.reveal(), PREFIX + var)):
            problems.append(msg)
    if s.jwt_previous_secret is not None and s.jwt_secret is None:
        problems.append(f"{PREFIX}JWT_PREVIOUS_SECRET is set without {PREFIX}JWT_SECRET.")
    if s.jwt_secret is None and not s.jwt_public_keys and not s.jwt_jwks:
        problems.append(
            f"No key to verify tokens with: set {PREFIX}JWT_SECRET, {PREFIX}JWT_PUBLIC_KEY or "
            f"{PREFIX}JWT_JWKS_URL (scripts/run writes a development secret into .env for you)."
        )
    unsupported = [a for a in s.jwt_algorithms if a not in SUPPORTED_ALGORITHMS]
    if unsupported or not s.jwt_algorithms:
        problems.append(
            f"{PREFIX}JWT_ALGORITHMS must list some of {', '.join(SUPPORTED_ALGORITHMS)}; "
            f"not supported: {', '.join(unsupported) or '(empty)'}."
        )
    issuers = [e.issuer for e in s.jwt_jwks]
    if len(set(issuers)) != len(issuers):
        problems.append(f"{PREFIX}JWT_JWKS_URL names an issuer twice.")
    if s.jwt_issuers:
        strays = [i for i in issuers if i not in s.jwt_issuers]
        if strays:
            problems.append(
                f"{PREFIX}JWT_JWKS_URL binds keys to issuers not in {PREFIX}JWT_ISSUER: "
                f"{', '.join(strays)}."
            )
    if s.redis_url is not None:
        if s.redis_secret is None:
            problems.append(
                f"{PREFIX}REDIS_SECRET is missing: with {PREFIX}REDIS_URL set, every node signs "
                "its cluster messages with it (the same value on every node, 32+ bytes), so "
                "nothing else that can publish on Redis is believed."
            )
        elif msg := _check_secret(s.redis_secret.reveal(), f"{PREFIX}REDIS_SECRET"):
            problems.append(msg)
    if s.demo_tokens and (s.jwt_secret is None or not s.demo):
        problems.append(
            f"{PREFIX}DEMO_TOKENS hands out tokens signed with {PREFIX}JWT_SECRET on the demo "
            f"page: it needs {PREFIX}DEMO=true and a {PREFIX}JWT_SECRET (development only)."
        )
    if not s.jwt_user_claim:
        problems.append(f"{PREFIX}JWT_USER_CLAIM must name a claim.")
    return problems


def _check_secret(secret: str, var: str) -> str | None:
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        return (
            f"{var} is too short: {size} bytes, needs at least {MIN_SECRET_BYTES} "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')."
        )
    return None


def _secret(raw: str, var: str) -> Secret:
    return Secret(raw)


def _text(raw: str, var: str) -> str:
    if any(ord(c) < 32 for c in raw):
        raise ValueError(f"{var} contains control characters.")
    return raw


def _text_list(raw: str, var: str) -> tuple[str, ...]:
    return tuple(_text(item.strip(), var) for item in raw.split(",") if item.strip())


def _int(low: int, high: int) -> Callable[[str, str], int]:
    def parse(raw: str, var: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ValueError(f"{var} must be a whole number from {low} to {high}, got {raw!r}.")
        return value

    return parse


def _algorithms(raw: str, var: str) -> tuple[str, ...]:
    names = tuple(item.strip() for item in raw.split(",") if item.strip())
    bad = [n for n in names if n not in SUPPORTED_ALGORITHMS]
    if bad:
        raise ValueError(
            f"{var} must list some of {', '.join(SUPPORTED_ALGORITHMS)} (exact spelling); "
            f"not supported: {', '.join(bad)}."
        )
    return names


def _public_keys(raw: str, var: str) -> tuple[str, ...]:
    """Inline PEM (``\\n`` escapes allowed) or the path of a PEM file; several concatenated
    public keys are allowed (for rotation)."""
    text = raw.replace("\\n", "\n") if raw.lstrip().startswith("-----BEGIN") else None
    if text is None:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ValueError(f"{var} is neither a PEM public key nor the path of a file.")
        text = path.read_text()
    if "PRIVATE KEY" in text:
        raise ValueError(f"{var} holds a private key; give the public key only.")
    blocks = [f"-----BEGIN{part}" for part in text.split("-----BEGIN")[1:]]
    if not blocks:
        raise ValueError(f"{var} holds no PEM block.")
    for block in blocks:
        try:
            key = load_pem_public_key(block.encode())
        except ValueError:
            raise ValueError(f"{var} holds a PEM block that is not a public key.") from None
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey,
                                ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            raise ValueError(f"{var}: only RSA, EC and Ed25519/Ed448 public keys are supported.")
    return tuple(blocks)


def _jwks(raw: str, var: str, issuers: tuple[str, ...]) -> tuple[JwksEndpoint, ...]:
    """Comma-separated entries, each ``URL`` (bound to the single SIGNAL_JWT_ISSUER) or
    ``ISSUER URL``."""
    endpoints = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        parts = entry.split()
        if len(parts) == 1:
            if len(issuers) != 1:
                raise ValueError(
                    f"{var}: a bare URL needs exactly one {PREFIX}JWT_ISSUER to bind its keys "
                    f"to; with several issuers write 'ISSUER URL' entries."
                )
            issuer, url = issuers[0], parts[0]
        elif len(parts) == 2:
            issuer, url = parts
        else:
            raise ValueError(f"{var} entries are 'URL' or 'ISSUER URL', got {entry!r}.")
        _check_url(url, var)
        endpoints.append(JwksEndpoint(issuer=issuer, url=url))
    return tuple(endpoints)


def _check_url(url: str, var: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise ValueError(f"{var}: {url!r} must be an https:// URL (http:// only for localhost).")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _existing_file(raw: str, var: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError(f"{var}: no file at {raw!r}.")
    return path


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


def _rate(raw: str, var: str) -> Rate:
    try:
        return Rate.parse(raw)
    except ValueError:
        raise ValueError(
            f"{var} must be RATE:BURST (events per second, largest burst), e.g. 30:120, "
            f"or 0 for no limit; got {raw!r}."
        ) from None


def _networks(raw: str, var: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    try:
        parse_networks(items)
    except ValueError:
        raise ValueError(
            f"{var} must list IP addresses or CIDR networks, e.g. 10.0.0.0/8,127.0.0.1; "
            f"got {raw!r}."
        ) from None
    return items


def _redis_url(raw: str, var: str) -> Secret:
    """A redis://, rediss:// or unix:// URL; kept as a Secret (it may hold a password)."""
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError(f"{var} must be a redis://, rediss:// or unix:// URL.")
    return Secret(raw)


def _channel(raw: str, var: str) -> str:
    if not all(c.isalnum() or c in "-_.:" for c in raw):
        raise ValueError(f"{var} may hold letters, digits and - _ . : only, got {raw!r}.")
    return raw


def _bool(raw: str, var: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{var} must be true or false, got {raw!r}.")


def _ice_servers(raw: str, var: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of RTCIceServer objects: ``[{"urls": "stun:stun.example.com:3478"}]``."""
    import json

    try:
        servers = json.loads(raw)
    except ValueError:
        servers = None
    ok = isinstance(servers, list) and all(
        isinstance(s, dict) and isinstance(s.get("urls"), (str, list))
        and set(s) <= {"urls", "username", "credential"} for s in servers)
    if not ok:
        raise ValueError(
            f"{var} must be a JSON list of RTCIceServer objects, e.g. "
            '[{"urls": "stun:stun.example.com:3478"}, {"urls": "turn:turn.example.com", '
            '"username": "u", "credential": "p"}].'
        )
    return tuple(servers)


def _log_level(raw: str, var: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{var} must be one of {', '.join(LOG_LEVELS)}, got {raw!r}.")
    return level

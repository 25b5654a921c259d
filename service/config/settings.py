"""Settings: one frozen object, checked on construction however it is made.

``Settings(...)`` (tests, embedders) and ``Settings.from_env()`` (the service; the text of
the environment is read into typed values by :mod:`service.config.environment`) go through the
same checks: :func:`check` finds every problem, per field and across fields, and one
:class:`ConfigError` names each by its ``SIGNAL_`` variable, so an operator fixes them all in
one go. Secrets are wrapped in :class:`~service.config.values.Secret` and never appear in a
repr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from service.config.environment import read_environment
from service.config.fields import (
    BOUNDS,
    ICE_SERVERS_HELP,
    PREFIX,
    RATE_FIELDS,
    WEBHOOK_EVENTS,
    WHOLE,
    bounds_message,
    rate_message,
    variable,
)
from service.config.values import (
    JwksEndpoint,
    Rate,
    Secret,
    is_loopback,
    normal_origin,
    parse_networks,
)
from service.errors import ConfigError

MIN_SECRET_BYTES: Final = 32
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
#: every algorithm the service can verify; ``none`` is never one of them
SUPPORTED_ALGORITHMS: Final = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
)
DEFAULT_ALGORITHMS: Final[tuple[str, ...]] = ("HS256", "RS256", "ES256", "EdDSA")
#: an offer to a user in another call: refused ``busy`` ...
REJECT: Final = "reject"
#: ... or rung anyway (call waiting)
RING: Final = "ring"
BUSY_POLICIES: Final = (REJECT, RING)


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
    #: with several issuers: their user ids are one namespace (``sub`` 42 is the same user
    #: whoever issued it) ...
    jwt_shared_user_ids: bool = False
    #: ... or each issuer's ids get its prefix: ``(("https://a.example", "a:"), ...)``
    jwt_user_id_prefixes: tuple[tuple[str, str], ...] = ()
    jwks_cache_ttl: int = 300
    jwks_refresh_interval: int = 30
    jwks_timeout: float = 5.0
    token_expiry_warning: int = 60
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    # ---- limits (see docs/security.md "Limits") ----
    max_message_bytes: int = 65536
    limit_relays: Rate = Rate(30, 120)
    limit_user_relays: Rate = Rate(60, 240)
    limit_rooms: Rate = Rate(2, 10)
    limit_refreshes: Rate = Rate(0.2, 3)
    limit_other: Rate = Rate(2, 10)
    limit_strikes: Rate = Rate(1, 50)
    limit_ip_connects: Rate = Rate(5, 30)
    #: new connections per user (a valid token's sessions spend these, not their address's)
    limit_user_connects: Rate = Rate(5, 30)
    limit_ip_auth_failures: Rate = Rate(0.2, 10)
    #: Engine.IO packets of any kind (messages, pings, upgrades, noops) per session ...
    limit_packets: Rate = Rate(50, 500)
    #: ... and per client address
    limit_ip_packets: Rate = Rate(500, 5000)
    max_connections_per_user: int = 10
    auth_timeout: float = 5.0
    max_queued_messages: int = 512
    send_timeout: float = 10.0
    #: Engine.IO's heartbeat (told to clients in the handshake)
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    trusted_proxies: tuple[str, ...] = ()
    # ---- scale-out (see docs/operating.md "Scaling out and deploying") ----
    redis_url: Secret | None = None
    redis_secret: Secret | None = None
    redis_channel: str = "signaling"
    redis_max_connections: int = 10
    node_ttl: float = 5.0
    sticky_sessions: bool = False
    shutdown_timeout: float = 10.0
    # ---- calls (see docs/protocol.md "Call life cycle") ----
    #: seconds an unanswered call rings (and an offline callee's offer is held)
    ring_timeout: float = 45.0
    #: seconds a party whose socket dropped has to come back before the call ends
    reconnect_grace: float = 15.0
    #: an offer to a user in another call: "reject" (ack busy) or "ring" (call waiting)
    busy_policy: str = "reject"
    #: POSTed call.incoming when a callee has no joined device (for push notifications)
    webhook_url: Secret | None = None
    webhook_secret: Secret | None = None
    #: which events go to webhook_url (docs/backend.md "Lifecycle webhooks")
    webhook_events: tuple[str, ...] = ("call.incoming",)
    #: seconds a lifecycle event is retried before it is given up (counted and logged)
    webhook_retry_for: float = 3600.0
    #: with it, GET /metrics answers only ``Authorization: Bearer <metrics_token>``
    metrics_token: Secret | None = None
    #: asked before an offer opens a call whether this caller may ring this callee
    call_policy_url: Secret | None = None
    #: seconds an answer of the call policy is kept per (caller, callee); 0: ask every time
    call_policy_cache: float = 30.0
    #: seconds the call policy has to answer
    call_policy_timeout: float = 2.0
    #: when it does not answer in time (or answers nonsense): allow the call anyway
    call_policy_fail_open: bool = False
    # ---- the server API for the app's backend (see docs/backend.md) ----
    #: credentials of /api/v1/ (several: rotation); none: the API is absent (404)
    api_keys: tuple[Secret, ...] = ()
    #: requests per credential
    limit_api: Rate = Rate(20, 100)
    # ---- demo (see README "A first call") ----
    demo: bool = False
    demo_tokens: bool = False
    ice_servers: tuple[dict[str, Any], ...] = ()
    #: TURN servers whose credentials the service mints (coturn's use-auth-secret)
    turn_urls: tuple[str, ...] = ()
    turn_secret: Secret | None = None
    turn_ttl: int = 3600

    def __post_init__(self) -> None:
        problems = check(self)
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
        values, problems = read_environment(environ, env_file, known=KNOWN)
        try:
            settings = cls(**values)
        except ConfigError as exc:
            raise ConfigError(problems + exc.problems) from None
        if problems:
            raise ConfigError(problems)
        return settings

    @property
    def trusted_issuers(self) -> int:
        """How many parties issue the tokens this service accepts (each JWKS issuer; the
        static keys count once, or once per accepted issuer they serve)."""
        jwks = {e.issuer for e in self.jwt_jwks}
        static = self.jwt_secret is not None or bool(self.jwt_public_keys)
        if not static:
            return len(jwks)
        others = set(self.jwt_issuers) - jwks if self.jwt_issuers else {None}
        return len(jwks) + len(others)


def check(s: Settings) -> list[str]:
    """Every problem with ``s``: each field on its own, then the rules that involve several.
    Shared by direct construction and :meth:`Settings.from_env`."""
    problems: list[str] = []
    for field, (low, high) in BOUNDS.items():
        value = getattr(s, field)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (not number or not math.isfinite(value) or not low <= value <= high
                or (field in WHOLE and not isinstance(value, int))):
            problems.append(bounds_message(field, value))
    for field in ("jwt_secret", "jwt_previous_secret", "redis_secret", "webhook_secret",
                  "turn_secret", "metrics_token"):
        secret = getattr(s, field)
        if secret is not None and (msg := _check_secret(secret.reveal(), variable(field))):
            problems.append(msg)
    for key in s.api_keys:
        if msg := _check_secret(key.reveal(), variable("api_keys")):
            problems.append(msg)
    if len({key.reveal() for key in s.api_keys}) != len(s.api_keys):
        problems.append(f"{variable('api_keys')} names a key twice.")
    for pem in s.jwt_public_keys:
        if msg := check_public_key(pem, variable("jwt_public_keys")):
            problems.append(msg)
    for endpoint in s.jwt_jwks:
        if msg := check_url(endpoint.url, variable("jwt_jwks")):
            problems.append(msg)
    for field in ("jwt_issuers", "jwt_audiences"):
        if any(_has_control(item) or not item for item in getattr(s, field)):
            problems.append(f"{variable(field)} entries must be non-empty text without "
                            "control characters.")
    unsupported = [a for a in s.jwt_algorithms if a not in SUPPORTED_ALGORITHMS]
    if unsupported or not s.jwt_algorithms:
        problems.append(
            f"{PREFIX}JWT_ALGORITHMS must list some of {', '.join(SUPPORTED_ALGORITHMS)}; "
            f"not supported: {', '.join(unsupported) or '(empty)'}."
        )
    if not s.jwt_user_claim or _has_control(s.jwt_user_claim):
        problems.append(f"{PREFIX}JWT_USER_CLAIM must name a claim.")
    if s.jwt_denylist_file is not None and not Path(s.jwt_denylist_file).is_file():
        problems.append(f"{PREFIX}JWT_DENYLIST_FILE: no file at {str(s.jwt_denylist_file)!r}.")
    for origin in s.cors_origins:
        if msg := check_origin(origin, variable("cors_origins")):
            problems.append(msg)
    if s.log_level not in LOG_LEVELS:
        problems.append(f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                        f"got {s.log_level!r}.")
    for field in RATE_FIELDS:
        rate = getattr(s, field)
        if not isinstance(rate, Rate) or not rate.valid:
            problems.append(rate_message(variable(field), f"{rate!s}"))
    try:
        parse_networks(s.trusted_proxies)
    except ValueError:
        problems.append(f"{PREFIX}TRUSTED_PROXIES must list IP addresses or CIDR networks, "
                        f"e.g. 10.0.0.0/8,127.0.0.1; got {', '.join(s.trusted_proxies)!r}.")
    if s.redis_url is not None and (msg := check_redis_url(s.redis_url.reveal())):
        problems.append(msg)
    if not s.redis_channel or not all(c.isalnum() or c in "-_.:" for c in s.redis_channel):
        problems.append(f"{PREFIX}REDIS_CHANNEL may hold letters, digits and - _ . : only, "
                        f"got {s.redis_channel!r}.")
    if not ice_servers_ok(s.ice_servers):
        problems.append(ICE_SERVERS_HELP)
    for url in s.turn_urls:
        if not url.startswith(("turn:", "turns:")) or len(url) <= 6 or _has_control(url):
            problems.append(f"{PREFIX}TURN_URLS entries are turn: or turns: URLs, e.g. "
                            f"turn:turn.example.com:3478?transport=udp; got {url!r}.")
    if s.busy_policy not in BUSY_POLICIES:
        problems.append(f"{PREFIX}BUSY_POLICY must be one of {', '.join(BUSY_POLICIES)}, "
                        f"got {s.busy_policy!r}.")
    if s.webhook_url is not None and (msg := check_webhook_url(s.webhook_url.reveal())):
        problems.append(msg)
    if s.call_policy_url is not None and (
            msg := check_webhook_url(s.call_policy_url.reveal(), "call_policy_url")):
        problems.append(msg)
    strays = [e for e in s.webhook_events if e not in WEBHOOK_EVENTS]
    if strays:
        problems.append(f"{PREFIX}WEBHOOK_EVENTS names unknown events ({', '.join(strays)}): "
                        f"use all, or some of {', '.join(WEBHOOK_EVENTS)}.")
    problems.extend(_across(s))
    return problems


def _across(s: Settings) -> list[str]:
    """Rules that involve several settings."""
    problems: list[str] = []
    if s.jwt_previous_secret is not None and s.jwt_secret is None:
        problems.append(f"{PREFIX}JWT_PREVIOUS_SECRET is set without {PREFIX}JWT_SECRET.")
    if s.jwt_secret is None and not s.jwt_public_keys and not s.jwt_jwks:
        problems.append(
            f"No key to verify tokens with: set {PREFIX}JWT_SECRET, {PREFIX}JWT_PUBLIC_KEY or "
            f"{PREFIX}JWT_JWKS_URL (scripts/run writes a development secret into .env for you)."
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
    problems.extend(_user_id_rules(s))
    if s.redis_url is not None and s.redis_secret is None:
        problems.append(
            f"{PREFIX}REDIS_SECRET is missing: with {PREFIX}REDIS_URL set, every node signs "
            "its cluster messages with it (the same value on every node, 32+ bytes), so "
            "nothing else that can publish on Redis is believed."
        )
    if (s.webhook_url is not None or s.call_policy_url is not None) and (
            s.webhook_secret is None):
        problems.append(
            f"{PREFIX}WEBHOOK_SECRET is missing: with {PREFIX}WEBHOOK_URL or "
            f"{PREFIX}CALL_POLICY_URL set, every request to your backend is signed with it "
            "(32+ bytes) so the receiver can tell it came from this service."
        )
    if bool(s.turn_urls) != (s.turn_secret is not None):
        problems.append(
            f"{PREFIX}TURN_URLS and {PREFIX}TURN_SECRET go together: the service mints TURN "
            "credentials with the secret your TURN server shares (coturn: use-auth-secret, "
            "static-auth-secret).")
    if s.webhook_secret is not None and s.webhook_url is None and s.call_policy_url is None:
        problems.append(f"{PREFIX}WEBHOOK_SECRET is set without {PREFIX}WEBHOOK_URL or "
                        f"{PREFIX}CALL_POLICY_URL.")
    if s.demo_tokens and (s.jwt_secret is None or not s.demo):
        problems.append(
            f"{PREFIX}DEMO_TOKENS hands out tokens signed with {PREFIX}JWT_SECRET on the demo "
            f"page: it needs {PREFIX}DEMO=true and a {PREFIX}JWT_SECRET (development only)."
        )
    return problems


def _user_id_rules(s: Settings) -> list[str]:
    """With several issuers, the operator says how their user ids relate."""
    var = variable("jwt_shared_user_ids")
    prefixes = dict(s.jwt_user_id_prefixes)
    if s.jwt_shared_user_ids and prefixes:
        return [f"{var} is either 'shared' or a list of 'ISSUER PREFIX' entries, not both."]
    if prefixes:
        problems = []
        if len(prefixes) != len(s.jwt_user_id_prefixes):
            problems.append(f"{var} names an issuer twice.")
        if not s.jwt_issuers:
            problems.append(f"{var} with prefixes needs {PREFIX}JWT_ISSUER, listing every "
                            "issuer the service accepts.")
        missing = [i for i in s.jwt_issuers if i not in prefixes]
        strays = [i for i in prefixes if i not in s.jwt_issuers]
        if missing:
            problems.append(f"{var} gives no prefix for: {', '.join(missing)}.")
        if strays:
            problems.append(f"{var} names issuers not in {PREFIX}JWT_ISSUER: "
                            f"{', '.join(strays)}.")
        values = list(prefixes.values())
        if any(not p or _has_control(p) for p in values) or any(
                a != b and b.startswith(a) for a in values for b in values) or len(
                set(values)) != len(values):
            problems.append(f"{var}: prefixes must be non-empty, distinct, and none may begin "
                            "another (else two issuers' ids could meet).")
        return problems
    if s.trusted_issuers > 1 and not s.jwt_shared_user_ids:
        return [
            f"{var} is required: this service trusts tokens from {s.trusted_issuers} issuers, "
            f"and a user id is their 'sub' alone, so issuer B's user 42 would be issuer A's "
            f"user 42. Say how their ids relate: {var}=shared (one namespace: the same id is "
            f"the same person whoever issued it), or {var}='ISSUER PREFIX,ISSUER PREFIX' "
            f"(e.g. 'https://a.example.com a:,https://b.example.com b:': B's 42 becomes b:42)."
        ]
    return []


def _check_secret(secret: str, var: str) -> str | None:
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        return (
            f"{var} is too short: {size} bytes, needs at least {MIN_SECRET_BYTES} "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')."
        )
    return None


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 for c in text)


def check_public_key(pem: str, var: str) -> str | None:
    """A problem with one PEM block that should hold a supported public key."""
    if "PRIVATE KEY" in pem:
        return f"{var} holds a private key; give the public key only."
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        return f"{var} holds a PEM block that is not a public key."
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey,
                            ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return f"{var}: only RSA, EC and Ed25519/Ed448 public keys are supported."
    return None


def check_url(url: str, var: str) -> str | None:
    """JWKS URLs are https (http only for loopback)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return None
    return f"{var}: {url!r} must be an https:// URL (http:// only for localhost)."


def check_origin(origin: str, var: str) -> str | None:
    if normal_origin(origin) != origin:
        return (f"{var} entries must look like https://app.example.com[:port] "
                f"(scheme and host in lower case, no path), got {origin!r}.")
    return None


def check_webhook_url(url: str, field: str = "webhook_url") -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        return f"{variable(field)} must be an http:// or https:// URL."
    return None


def check_redis_url(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        return f"{PREFIX}REDIS_URL must be a redis://, rediss:// or unix:// URL."
    return None


def ice_servers_ok(servers: object) -> bool:
    return isinstance(servers, (list, tuple)) and all(
        isinstance(s, dict) and isinstance(s.get("urls"), (str, list))
        and set(s) <= {"urls", "username", "credential"} for s in servers)


def known_variables() -> frozenset[str]:
    """Every variable name (without the prefix) that sets a field, and ENV_FILE."""
    return frozenset({variable(f)[len(PREFIX):] for f in Settings.__dataclass_fields__}
                     | {"ENV_FILE"})


KNOWN: Final = known_variables()

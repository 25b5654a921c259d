"""What names each setting and bounds its numbers: the ``SIGNAL_`` variable of every field, the
inclusive bounds of the numeric ones, and the messages that the checks
(:mod:`service.config.settings`) and the environment reader (:mod:`service.config.environment`)
both report."""

from __future__ import annotations

from typing import Final

PREFIX: Final = "SIGNAL_"
MAX_LEEWAY_SECONDS: Final = 300

#: the variable that sets each field whose name is not simply its field name in capitals
VARIABLES: Final = {
    "jwt_public_keys": "JWT_PUBLIC_KEY", "jwt_jwks": "JWT_JWKS_URL",
    "jwt_issuers": "JWT_ISSUER", "jwt_audiences": "JWT_AUDIENCE",
    "jwt_shared_user_ids": "JWT_USER_IDS", "jwt_user_id_prefixes": "JWT_USER_IDS",
}

#: whole-number (and seconds) settings: inclusive bounds
BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "jwt_leeway": (0, MAX_LEEWAY_SECONDS),
    "jwt_max_lifetime": (60, 366 * 86400),
    "jwt_max_token_bytes": (256, 65536),
    "jwks_cache_ttl": (1, 86400),
    "jwks_refresh_interval": (1, 3600),
    "jwks_timeout": (1, 60),
    "token_expiry_warning": (0, 3600),
    "max_message_bytes": (1024, 1_048_576),
    "max_connections_per_user": (0, 100_000),
    "auth_timeout": (1, 300),
    "max_queued_messages": (16, 1_000_000),
    "send_timeout": (1, 300),
    "ping_interval": (0.1, 600),
    "ping_timeout": (0.1, 600),
    "redis_max_connections": (2, 1000),
    "node_ttl": (2, 300),
    "shutdown_timeout": (1, 600),
    "ring_timeout": (1, 600),
    "reconnect_grace": (1, 600),
    "turn_ttl": (10, 86400),
    "call_policy_cache": (0, 3600),
    "call_policy_timeout": (0.1, 30),
    "webhook_retry_for": (10, 7 * 86400),
}
#: of those, the ones that must be whole numbers (the rest are seconds, fractions allowed)
WHOLE: Final = frozenset({"jwt_leeway", "jwt_max_lifetime", "jwt_max_token_bytes",
                          "jwks_cache_ttl", "jwks_refresh_interval", "token_expiry_warning",
                          "max_message_bytes", "max_connections_per_user",
                          "max_queued_messages", "redis_max_connections", "turn_ttl"})


def variable(field: str) -> str:
    """The environment variable that sets ``field``."""
    return PREFIX + VARIABLES.get(field, field.upper())


def bounds_message(field: str, raw: object) -> str:
    low, high = BOUNDS[field]
    kind = "a whole number" if field in WHOLE else "a number of seconds"
    return f"{variable(field)} must be {kind} from {low} to {high}, got {raw!r}."


#: the webhook's event types (``SIGNAL_WEBHOOK_EVENTS``; ``all`` is every one)
WEBHOOK_EVENTS: Final = ("call.incoming", "call.ringing", "call.answered", "call.ended",
                         "call.missed", "call.cancelled", "user.online", "user.offline")


#: the settings that are a :class:`~service.config.Rate`
RATE_FIELDS: Final = ("limit_relays", "limit_user_relays", "limit_rooms", "limit_refreshes",
                      "limit_other", "limit_strikes", "limit_ip_connects", "limit_user_connects",
                      "limit_ip_auth_failures", "limit_packets", "limit_ip_packets",
                      "limit_api")


def rate_message(var: str, shown: str) -> str:
    """What a ``RATE:BURST`` setting must look like."""
    return (f"{var} must be RATE:BURST (events per second, largest burst), e.g. "
            f"30:120, or 0 for no limit; got {shown}.")


ICE_SERVERS_HELP: Final = (
    f"{PREFIX}ICE_SERVERS must be a JSON list of RTCIceServer objects, e.g. "
    '[{"urls": "stun:stun.example.com:3478"}, {"urls": "turn:turn.example.com", '
    '"username": "u", "credential": "p"}].'
)

"""Every error the service names, each with a stable ``code``.

::

    SignalingError
    ├── ConfigError                 settings are missing or bad; start-up stops
    ├── ConnectionRefused           connect_error {message: code, data: {reason}}
    │   ├── AuthError               message "unauthorized"
    │   │   ├── TokenMissing        reason "token_missing"
    │   │   ├── TokenInvalid        reason "token_invalid"
    │   │   ├── TokenExpired        reason "token_expired"
    │   │   ├── TokenNotYetValid    reason "token_not_yet_valid"
    │   │   └── TokenRevoked        reason "token_revoked"
    │   ├── Throttled               message and reason "rate_limited"
    │   ├── TooManyConnections      message and reason "too_many_connections"
    │   ├── ServiceUnavailable      message and reason "unavailable" (Redis away, shutting down)
    │   │   └── KeysUnavailable     the token's issuer has no keys yet (its JWKS cannot be had)
    │   └── SessionClosed           reason "session_closed" (the session ended while
    │                               connecting: nobody is there to read it; logged)
    └── RequestError                an event is answered {"ok": false, "error": code}
        ├── InvalidPayload          "invalid_payload"
        ├── Forbidden               "forbidden"
        ├── UnknownEvent            "unknown_event"
        ├── RateLimited             "rate_limited"
        ├── Unavailable             "unavailable" (the cluster cannot be reached: retry)
        ├── ShuttingDown            "shutting_down" (this node is leaving: reconnect)
        ├── NotInCall               "not_in_call" (no open call between the two, or not
        │                           this device's)
        ├── Busy                    "busy" (the callee is in another call)
        └── Glare                   "glare" (the callee offered first; ack has its callId)

Codes and reasons are part of the public protocol: clients branch on them, so they
never change meaning. Messages are for humans and never contain a token or a payload.
"""

from __future__ import annotations


class SignalingError(Exception):
    """Base of every error the service raises on purpose."""

    code: str = "error"


class ConfigError(SignalingError):
    """One or more settings are missing or invalid; the message lists them all."""

    code = "config_error"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems))


class ConnectionRefused(SignalingError):
    """A connection is refused: the client's ``connect_error`` has ``message == code`` and
    ``data == {"reason": reason}``."""

    code = "refused"
    reason = "refused"


class AuthError(ConnectionRefused):
    """A token was not accepted. ``reason`` tells the client whether to refresh or give up."""

    code = "unauthorized"
    reason = "token_invalid"


class TokenMissing(AuthError):
    """No token in the ``auth`` payload nor in an ``Authorization: Bearer`` header."""

    reason = "token_missing"


class TokenInvalid(AuthError):
    """Malformed, badly signed, wrong algorithm, wrong issuer/audience or missing claims."""

    reason = "token_invalid"


class TokenExpired(AuthError):
    """The token's ``exp`` has passed (beyond the leeway): get a fresh token."""

    reason = "token_expired"


class TokenNotYetValid(AuthError):
    """The token's ``nbf`` or ``iat`` lies in the future (beyond the leeway)."""

    reason = "token_not_yet_valid"


class TokenRevoked(AuthError):
    """The token's ``jti`` is on the deny-list: get a new token (signing in again)."""

    reason = "token_revoked"


class Throttled(ConnectionRefused):
    """Too many connection attempts or failed authentications from this address: wait."""

    code = "rate_limited"
    reason = "rate_limited"


class TooManyConnections(ConnectionRefused):
    """The user already has ``SIGNAL_MAX_CONNECTIONS_PER_USER`` connections."""

    code = "too_many_connections"
    reason = "too_many_connections"


class ServiceUnavailable(ConnectionRefused):
    """This node cannot take connections now (presence store away, or shutting down)."""

    code = "unavailable"
    reason = "unavailable"


class KeysUnavailable(ServiceUnavailable):
    """The token's issuer has no keys here yet: its JWKS has not been fetched (the IdP is
    down or slow), or names no such ``kid`` and could not be fetched again. Not the token's
    fault: retry (the app must not log the user out)."""


class SessionClosed(ConnectionRefused):
    """The Engine.IO session ended while its connect was being verified."""

    code = "session_closed"
    reason = "session_closed"


class RequestError(SignalingError):
    """A client event was refused; nothing was relayed and nothing changed."""

    code = "request_error"

    def ack_fields(self) -> dict[str, str]:
        """What the refusal's ack carries besides ``ok``, ``error`` and ``detail``."""
        return {}


class InvalidPayload(RequestError):
    """The event's arguments do not match its schema."""

    code = "invalid_payload"


class Forbidden(RequestError):
    """The event is well formed but the caller may not do it (e.g. join another user's room)."""

    code = "forbidden"


class UnknownEvent(RequestError):
    """The event name is not part of the protocol."""

    code = "unknown_event"


class RateLimited(RequestError):
    """The client sends this kind of event faster than its limit; nothing was done."""

    code = "rate_limited"


class Unavailable(RequestError):
    """The cluster (Redis) cannot be reached: nothing was delivered; retry."""

    code = "unavailable"


class ShuttingDown(RequestError):
    """This node is shutting down: reconnect (to another node) and send again."""

    code = "shutting_down"


class NotInCall(RequestError):
    """No open call between the sender and ``to`` (or with that ``callId``), or the call is
    on another device of the sender, or the event does not fit the call's state."""

    code = "not_in_call"


class Busy(RequestError):
    """The callee is in an open call with someone else (``SIGNAL_BUSY_POLICY=reject``)."""

    code = "busy"


class Glare(RequestError):
    """Both users offered each other; the other offer arrived first: answer that call."""

    code = "glare"

    def __init__(self, call_id: str) -> None:
        super().__init__()
        self.call_id = call_id

    def ack_fields(self) -> dict[str, str]:
        return {"callId": self.call_id}

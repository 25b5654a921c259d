"""The server API for the app's backend, under ``/api/v1/`` (docs/backend.md): presence,
disconnect (and revoke), notify, calls. Present only when ``SIGNAL_API_KEYS`` is set.

A request carries ``Authorization: Bearer <one of the keys>``; keys are compared in constant
time, each of them every time (which one matched, or whether one did, takes the same time).
A user's token is not a key, and a key is not a token (``/socket.io/`` refuses it). Failed
attempts spend their address's authentication budget (the one connects spend); each key has
its own request budget (``SIGNAL_LIMIT_API``). Errors are ``{"error": code, "detail"}`` with
the protocol's codes: 400 ``invalid_payload``, 401 ``unauthorized``, 404 ``not_found``, 413
``too_large``, 429 ``rate_limited``, 503 ``unavailable``.
"""

from __future__ import annotations

import hmac
import json as jsonlib
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from sanic import Request, Sanic
from sanic.exceptions import PayloadTooLarge
from sanic.response import HTTPResponse, json

from service.config import Settings
from service.errors import InvalidPayload, Throttled, Unavailable
from service.policy import KeyedBuckets
from service.protocol import parse_user_id
from service.signaling import Control
from service.telemetry import Metrics

if TYPE_CHECKING:
    from service.signaling import Signaling

PREFIX: Final = "/api/v1"
#: users in one presence query
MAX_USERS: Final = 1000
#: the largest request body (a presence query of MAX_USERS ids of 256 characters fits);
#: read only once the key is checked (the routes stream), above the limit of other routes
MAX_BODY_BYTES: Final = 512 * 1024
#: the largest ``notify`` payload, as JSON
MAX_NOTIFY_BYTES: Final = 4096
#: what a disconnect reason may look like (the client sees it as a code)
REASON: Final = re.compile(r"[a-z0-9_]{1,64}")
DEFAULT_REASON: Final = "disconnected_by_server"
CALL_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
Handler = Callable[..., Awaitable[HTTPResponse]]


def problem(status: int, code: str, detail: str, **headers: str) -> HTTPResponse:
    return json({"error": code, "detail": detail}, status=status, headers=headers or None)


class ApiKeys:
    """The configured keys; :meth:`match` is constant-time over all of them."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self._keys = keys

    def match(self, authorization: str | None) -> int | None:
        """The index of the key ``authorization`` (``Bearer <key>``) carries, or None."""
        scheme, _, given = (authorization or "").strip().partition(" ")
        candidate = given.strip().encode() if scheme.lower() == "bearer" else b""
        found = None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(candidate, key) and found is None:
                found = index
        return found


def register_api(app: Sanic[Any, Any], signaling: Signaling, settings: Settings,
                 metrics: Metrics) -> None:
    """Add ``/api/v1/`` to ``app`` when ``settings.api_keys`` names any key."""
    if not settings.api_keys:
        return
    keys = ApiKeys(tuple(k.reveal().encode() for k in settings.api_keys))
    budgets = KeyedBuckets(settings.limit_api)
    # (a revocation outlives the last token it refuses, clock leeway included)
    control = Control(signaling,
                      max_token_lifetime=settings.jwt_max_lifetime + settings.jwt_leeway,
                      logger=signaling.log)
    guard = signaling.guard

    def operation(name: str) -> Callable[[Handler], Handler]:
        """Authenticate, rate limit, count, and turn errors into answers."""
        def wrap(handler: Handler) -> Handler:
            async def answer(request: Request, **params: Any) -> HTTPResponse:
                response = await guarded(request, params)
                metrics.api_requests.labels(name, str(response.status)).inc()
                return response

            async def guarded(request: Request, params: dict[str, Any]) -> HTTPResponse:
                ip = guard.client_ip(str(request.ip), request.headers.get("x-forwarded-for"))
                if not guard.may_authenticate(ip):
                    return problem(429, Throttled.code, "too many failed attempts",
                                   **{"Retry-After": "5"})
                key = keys.match(request.headers.get("authorization"))
                if key is None:
                    guard.authentication_failed(ip)
                    return problem(401, "unauthorized", "an API key is required",
                                   **{"WWW-Authenticate": 'Bearer realm="api"'})
                if not budgets.take(str(key)):
                    return problem(429, Throttled.code, "too many requests with this key",
                                   **{"Retry-After": "1"})
                if request.method == "POST" and request.stream is not None:
                    request.stream.request_max_size = MAX_BODY_BYTES
                    try:
                        receive: Any = request.receive_body  # (untyped in Sanic)
                        await receive()
                    except PayloadTooLarge:
                        return problem(413, "too_large", f"at most {MAX_BODY_BYTES} bytes")
                try:
                    params = {name: path_value(value) for name, value in params.items()}
                    return await handler(request, **params)
                except InvalidPayload as exc:
                    return problem(400, exc.code, str(exc))
                except Unavailable as exc:
                    return problem(503, exc.code, str(exc), **{"Retry-After": "1"})
            answer.__name__ = handler.__name__
            return answer
        return wrap

    @app.get(f"{PREFIX}/users/<user:str>/presence", name="api_presence")
    @operation("presence")
    async def presence(request: Request, user: str) -> HTTPResponse:
        """Whether a user is online, its devices (transport, connected since, joined), and
        whether it is in a call or ringing."""
        return json(await control.presence(parse_user_id(user, "user")))

    @app.post(f"{PREFIX}/presence", name="api_presence_many", stream=True)
    @operation("presence_many")
    async def presence_many(request: Request) -> HTTPResponse:
        """:func:`presence` of up to 1,000 users: ``{"users": [id, ...]}``."""
        users = body(request).get("users")
        if not isinstance(users, list) or not 0 < len(users) <= MAX_USERS:
            raise InvalidPayload(f"users must be a list of 1 to {MAX_USERS} user ids")
        ids = list(dict.fromkeys(parse_user_id(u, "users[]") for u in users))
        return json({"users": await control.presence_of(ids)})

    @app.post(f"{PREFIX}/users/<user:str>/disconnect", name="api_disconnect", stream=True)
    @operation("disconnect")
    async def disconnect(request: Request, user: str) -> HTTPResponse:
        """Close the user's sockets (or ``device``'s), each told ``reason`` in a
        ``server_disconnect``; ``revoke``: its tokens issued until now are refused."""
        data = body(request, empty_ok=True)
        unknown = set(data) - {"reason", "device", "revoke"}
        if unknown:
            raise InvalidPayload(f"unknown fields: {', '.join(sorted(unknown))}")
        reason = data.get("reason", DEFAULT_REASON)
        if not isinstance(reason, str) or REASON.fullmatch(reason) is None:
            raise InvalidPayload("reason must be 1 to 64 of a-z, 0-9 and _")
        device = data.get("device")
        if device is not None and (not isinstance(device, str) or not 0 < len(device) <= 256):
            raise InvalidPayload("device must be a device id from presence")
        revoke = data.get("revoke", False)
        if not isinstance(revoke, bool):
            raise InvalidPayload("revoke must be true or false")
        return json(await control.disconnect(parse_user_id(user, "user"), reason,
                                             device=device, revoke=revoke))

    @app.post(f"{PREFIX}/users/<user:str>/notify", name="api_notify", stream=True)
    @operation("notify")
    async def notify(request: Request, user: str) -> HTTPResponse:
        """``notify {payload}`` to each of the user's sockets; how many got it."""
        data = body(request)
        if set(data) != {"payload"}:
            raise InvalidPayload("the body is {\"payload\": <any JSON>}")
        size = len(jsonlib.dumps(data["payload"], separators=(",", ":")).encode())
        if size > MAX_NOTIFY_BYTES:
            raise InvalidPayload(f"payload is {size} bytes as JSON; at most {MAX_NOTIFY_BYTES}")
        return json({"devices": await control.notify(parse_user_id(user, "user"),
                                                     data["payload"])})

    @app.get(f"{PREFIX}/users/<user:str>/calls", name="api_calls")
    @operation("calls")
    async def calls(request: Request, user: str) -> HTTPResponse:
        """The user's open calls."""
        return json({"calls": await control.calls(parse_user_id(user, "user"))})

    @app.post(f"{PREFIX}/users/<user:str>/calls/<call_id:str>/end", name="api_end_call",
              stream=True)
    @operation("end_call")
    async def end_call(request: Request, user: str, call_id: str) -> HTTPResponse:
        """End the user's call: both parties get ``hangup {reason: "ended_by_server"}``."""
        if CALL_ID.fullmatch(call_id) is None:
            raise InvalidPayload("not a call id")
        if not await control.end_call(parse_user_id(user, "user"), call_id):
            return problem(404, "not_found", "the user has no such open call")
        return json({"ended": True})


def path_value(raw: str) -> str:
    """A path segment as sent, percent-decoded (Sanic hands it over raw): a user id with a
    space, a slash or a letter outside ASCII is addressed as ``a%20b``, ``a%2Fb``, ``%C3%A9``.
    Raises :class:`InvalidPayload`."""
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidPayload("a path segment is not percent-encoded UTF-8") from None


def body(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request's JSON object. Raises :class:`InvalidPayload`."""
    if not request.body and empty_ok:
        return {}
    try:
        # (NaN and Infinity are not JSON: a client could not parse them back)
        data = jsonlib.loads(request.body, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidPayload("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidPayload("the body must be a JSON object")
    return data


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")

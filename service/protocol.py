"""The event protocol: one parser per client event, turning raw Socket.IO arguments into
typed values or raising :class:`InvalidPayload`.

Handlers call these at the boundary and never look at a raw argument again. Parsers are
pure: no I/O, no Socket.IO, no Sanic. Error details name the field that is wrong and never
echo a value (SDP and ICE candidates reveal IP addresses).

User ids are strings (the JWT ``sub``). A client may send an integer instead (``42``, as a
JavaScript app with numeric database ids would): it is read as its decimal string (``"42"``).
Floats, booleans and every other type are refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from service.errors import InvalidPayload

MAX_USER_ID_LENGTH: Final = 256
MAX_CALL_ID_LENGTH: Final = 128
MAX_SIGNAL_ID_LENGTH: Final = 128
MAX_SDP_LENGTH: Final = 48 * 1024
MAX_CANDIDATE_LENGTH: Final = 2048
MAX_MID_LENGTH: Final = 256
MAX_UFRAG_LENGTH: Final = 256
MAX_MLINE_INDEX: Final = 65535
#: the whole relayed message, as UTF-8 JSON, including pass-through fields; a little under
#: the default transport limit (SIGNAL_MAX_MESSAGE_BYTES, 64 KiB), which also counts framing
MAX_RELAY_BYTES: Final = 60 * 1024
#: a relay's JSON values (objects, lists and scalars) and nesting at most: what an app puts
#: beside the description or candidate (a callId, a few flags) is far below; a 59 KB list of
#: numbers (thousands of nodes, each copied and walked on its way through) is not
MAX_RELAY_NODES: Final = 256
MAX_RELAY_DEPTH: Final = 8

JOIN: Final = "JoinSocket"
LEAVE: Final = "LeaveSocket"
OFFER: Final = "offer"
ANSWER: Final = "answer"
CANDIDATE: Final = "candidate"
HANGUP: Final = "hangup"
RELAY_EVENTS: Final = (OFFER, ANSWER, CANDIDATE, HANGUP)
REFRESH: Final = "RefreshToken"
ICE_SERVERS: Final = "GetIceServers"
CLAIM: Final = "ClaimCall"
#: a refresh token argument longer than this is refused before the verifier sees it
MAX_REFRESH_TOKEN_LENGTH: Final = 65536

#: control characters, which no user id contains
_CONTROL: Final = re.compile("[\x00-\x1f\x7f]")
#: which RTCSessionDescription ``type`` each description-carrying event may hold
_DESCRIPTION_TYPES: Final = {OFFER: ("offer",), ANSWER: ("answer", "pranswer")}
#: the keys of a relayed message the server sets (``callId`` too, but a sender may name it)
_STAMPED: Final = frozenset({"from", "seq"})


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """An RTCSessionDescriptionInit: ``type`` and ``sdp``."""

    type: str
    sdp: str


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """An RTCIceCandidateInit. ``candidate == ""`` is the end-of-candidates marker."""

    candidate: str
    sdp_mid: str | None
    sdp_mline_index: int | None
    username_fragment: str | None


@dataclass(frozen=True, slots=True)
class Relay:
    """A validated relay event, ready to be stamped with its sender and delivered.

    ``body`` is the message as the client sent it, without ``from``: nothing is added,
    dropped, renamed or retyped (``to: 7`` stays the number 7; ``to`` is the id it names).
    """

    event: str
    to: str
    body: Mapping[str, Any]
    #: the call it belongs to, when the client names it
    call_id: str | None = None
    #: the body's length as JSON
    size: int = 0
    #: the sender's own id of this signal (``signalId``): a repeat is not relayed again
    signal_id: str | None = None

    def stamped(self, sender: str) -> dict[str, Any]:
        """The message the peer receives: ``from`` is always the authenticated sender."""
        return {**self.body, "from": sender}


def parse_user_id(value: object, field: str = "userID") -> str:
    """A user id: a non-empty string of at most 256 characters without control characters,
    or an integer (read as its decimal string)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidPayload(f"{field} must be a string")
    if not 0 < len(value) <= MAX_USER_ID_LENGTH:
        raise InvalidPayload(f"{field} must be 1 to {MAX_USER_ID_LENGTH} characters")
    if _CONTROL.search(value) is not None or _has_surrogate(value):
        raise InvalidPayload(f"{field} must not contain control characters")
    return value


def parse_room_request(args: Sequence[object]) -> str:
    """``JoinSocket(userID)`` / ``LeaveSocket(userID)``: exactly one user id."""
    return parse_user_id(_single(args))


def parse_ice_request(args: Sequence[object]) -> None:
    """``GetIceServers()``: no argument (or one ``null`` / empty object)."""
    if len(args) > 1 or (args and args[0] not in (None, {})):
        raise InvalidPayload("GetIceServers takes no argument")


@dataclass(frozen=True, slots=True)
class Claim:
    """``ClaimCall({callId, lastSeq?})``: this socket takes the call over; what its user's
    earlier socket may not have received after ``lastSeq`` is sent again."""

    call_id: str
    last_seq: int | None


def parse_claim(args: Sequence[object]) -> Claim:
    value = _single(args)
    if not isinstance(value, dict):
        raise InvalidPayload("ClaimCall takes {callId, lastSeq?}")
    call_id = value.get("callId")
    if (not isinstance(call_id, str) or not 0 < len(call_id) <= MAX_CALL_ID_LENGTH
            or _CONTROL.search(call_id) is not None):
        raise InvalidPayload("callId must be a call id")
    last_seq = value.get("lastSeq")
    if last_seq is not None and (not isinstance(last_seq, int) or isinstance(last_seq, bool)
                                 or not 0 <= last_seq < 2**53):
        raise InvalidPayload("lastSeq must be a whole number from 0")
    if set(value) - {"callId", "lastSeq"}:
        raise InvalidPayload("ClaimCall takes callId and lastSeq only")
    return Claim(call_id, last_seq)


def parse_refresh(args: Sequence[object]) -> str:
    """``RefreshToken(token)``: the token as a string, or ``{"token": ...}`` like the
    connection's ``auth`` payload."""
    value = _single(args)
    if isinstance(value, dict):
        value = value.get("token")
    if not isinstance(value, str) or not value or len(value) > MAX_REFRESH_TOKEN_LENGTH:
        raise InvalidPayload("RefreshToken takes a token string or {token}")
    return value


def parse_relay(event: str, args: Sequence[object]) -> Relay:
    """``offer``/``answer``/``candidate``/``hangup``: exactly one object with ``to`` and the
    event's own field."""
    payload = _single(args)
    if not isinstance(payload, dict):
        raise InvalidPayload(f"{event} payload must be an object")
    _check_shape(event, payload)
    to = parse_user_id(payload.get("to"), "to")
    if event in _DESCRIPTION_TYPES:
        _description(event, payload.get(event))
    elif event == CANDIDATE:
        _candidate(payload.get(event))
    elif event != HANGUP:
        raise InvalidPayload(f"{event} is not a relay event")
    # exactly what the sender sent, validated: strict decoders (kotlinx.serialization,
    # Swift's Codable) choke on keys they did not send, or on a changed type; but for what
    # the server stamps (``from``, ``seq``: a sender cannot forge them)
    body: dict[str, Any] = {k: v for k, v in payload.items() if k not in _STAMPED}
    call_id = payload.get("callId")
    if call_id is not None and not (isinstance(call_id, str)
                                    and 0 < len(call_id) <= MAX_CALL_ID_LENGTH
                                    and _CONTROL.search(call_id) is None):
        raise InvalidPayload(f"callId must be a string of 1 to {MAX_CALL_ID_LENGTH} "
                             "characters")
    signal_id = payload.get("signalId")
    if signal_id is not None and not (isinstance(signal_id, str)
                                      and 0 < len(signal_id) <= MAX_SIGNAL_ID_LENGTH
                                      and _CONTROL.search(signal_id) is None):
        raise InvalidPayload(f"signalId must be a string of 1 to {MAX_SIGNAL_ID_LENGTH} "
                             "characters")
    size = _check_size(event, body)
    return Relay(event=event, to=to, body=body, call_id=call_id, size=size,
                 signal_id=signal_id)


def _single(args: Sequence[object]) -> object:
    if len(args) != 1:
        raise InvalidPayload(f"expected exactly one argument, got {len(args)}")
    return args[0]


def _description(event: str, value: object) -> SessionDescription:
    if not isinstance(value, dict):
        raise InvalidPayload(f"{event}.{event} must be an RTCSessionDescriptionInit object")
    kind, sdp = value.get("type"), value.get("sdp")
    allowed = _DESCRIPTION_TYPES[event]
    if kind not in allowed:
        raise InvalidPayload(f"{event}.{event}.type must be one of {', '.join(allowed)}")
    if not isinstance(sdp, str) or not sdp:
        raise InvalidPayload(f"{event}.{event}.sdp must be a non-empty string")
    if len(sdp) > MAX_SDP_LENGTH:
        raise InvalidPayload(f"{event}.{event}.sdp is longer than {MAX_SDP_LENGTH} characters")
    return SessionDescription(type=kind, sdp=sdp)


def _candidate(value: object) -> IceCandidate:
    if not isinstance(value, dict):
        raise InvalidPayload("candidate.candidate must be an RTCIceCandidateInit object")
    text = value.get("candidate")
    if not isinstance(text, str) or len(text) > MAX_CANDIDATE_LENGTH:
        raise InvalidPayload(
            f"candidate.candidate.candidate must be a string of at most "
            f"{MAX_CANDIDATE_LENGTH} characters"
        )
    mid = _optional_text(value, "sdpMid", MAX_MID_LENGTH)
    ufrag = _optional_text(value, "usernameFragment", MAX_UFRAG_LENGTH)
    index = value.get("sdpMLineIndex")
    if index is not None and (
        not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_MLINE_INDEX
    ):
        raise InvalidPayload(
            f"candidate.candidate.sdpMLineIndex must be an integer from 0 to {MAX_MLINE_INDEX}"
        )
    if mid is None and index is None:
        raise InvalidPayload("candidate.candidate needs sdpMid or sdpMLineIndex")
    return IceCandidate(text, mid, index, ufrag)


def _optional_text(value: Mapping[str, object], key: str, limit: int) -> str | None:
    item = value.get(key)
    if item is None:
        return None
    if not isinstance(item, str) or len(item) > limit:
        raise InvalidPayload(f"candidate.candidate.{key} must be a string of at most {limit}")
    return item


def _check_shape(event: str, payload: Mapping[str, Any]) -> None:
    """At most :data:`MAX_RELAY_NODES` values, nested at most :data:`MAX_RELAY_DEPTH` deep;
    stops counting as soon as it is over."""
    budget = MAX_RELAY_NODES
    stack: list[tuple[object, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise InvalidPayload(f"{event} payload has more than {MAX_RELAY_NODES} values")
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        elif isinstance(value, float) and not math.isfinite(value):
            # NaN and Infinity (Python's JSON decoder accepts them): not portable JSON
            raise InvalidPayload(f"{event} payload must be plain JSON text")
        else:
            continue
        if depth >= MAX_RELAY_DEPTH and children:
            raise InvalidPayload(f"{event} payload is nested deeper than {MAX_RELAY_DEPTH}")
        if len(children) > budget:
            raise InvalidPayload(f"{event} payload has more than {MAX_RELAY_NODES} values")
        stack.extend((child, depth + 1) for child in children)


def _check_size(event: str, body: Mapping[str, Any]) -> int:
    try:
        size = len(orjson.dumps(body))
    except TypeError:  # beyond orjson (an integer over 64 bits, a lone surrogate): the
        try:           # standard library decides
            size = len(json.dumps(body, ensure_ascii=False, allow_nan=False,
                                  separators=(",", ":")).encode())
        except (TypeError, ValueError, RecursionError):
            # bytes (binary attachments), lone surrogates: not portable JSON
            raise InvalidPayload(f"{event} payload must be plain JSON text") from None
    if size > MAX_RELAY_BYTES:
        raise InvalidPayload(f"{event} payload is larger than {MAX_RELAY_BYTES} bytes")
    return size


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False

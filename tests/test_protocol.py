"""The pure protocol parsers, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import InvalidPayload
from service.protocol import parse_relay, parse_room_request, parse_user_id
from tests.test_relay import CANDIDATE, SDP


@pytest.mark.parametrize(("value", "expected"), [
    ("alice", "alice"), (42, "42"), (0, "0"), ("auth0|5f1c", "auth0|5f1c"), ("é" * 256, "é" * 256),
])
def test_user_ids_accepted(value: object, expected: str) -> None:
    """Strings and integers are user ids; integers read as decimal strings."""
    assert parse_user_id(value) == expected


@pytest.mark.parametrize("value", [None, "", "a" * 257, True, 1.0, [], {}, "a\x00b", "\ud800"])
def test_user_ids_refused(value: object) -> None:
    """Empty, oversized, non-string and control-character ids are refused."""
    with pytest.raises(InvalidPayload):
        parse_user_id(value)


def test_room_request_takes_exactly_one_argument() -> None:
    """``JoinSocket`` with zero or two arguments is refused."""
    assert parse_room_request(("alice",)) == "alice"
    for args in ((), ("alice", "bob")):
        with pytest.raises(InvalidPayload, match="exactly one"):
            parse_room_request(args)


def test_relay_drops_client_from_and_keeps_the_rest() -> None:
    """The parsed body never holds a ``from``; ``stamped`` adds the real sender; the rest is
    exactly what was sent (``to`` names user "5" and stays the number 5)."""
    relay = parse_relay("offer", ({"to": 5, "from": "carol", "offer": {"type": "offer", "sdp": SDP,
                                                                     "x": 1}, "k": [1]},))
    assert relay.to == "5"
    assert dict(relay.body) == {"to": 5, "offer": {"type": "offer", "sdp": SDP, "x": 1},
                                "k": [1]}
    assert relay.stamped("alice")["from"] == "alice"


def test_pranswer_is_an_answer() -> None:
    """A provisional answer travels as ``answer``."""
    relay = parse_relay("answer", ({"to": "b", "answer": {"type": "pranswer", "sdp": SDP}},))
    assert relay.body["answer"]["type"] == "pranswer"


def test_error_details_never_echo_values() -> None:
    """Refusals name the field, not its content (SDP and candidates reveal addresses)."""
    secret_sdp = "v=0 c=IN IP4 198.51.100.23"
    payloads: list[tuple[str, Any]] = [
        ("offer", {"to": "b", "offer": {"type": "bogus", "sdp": secret_sdp}}),
        ("candidate", {"to": "b", "candidate": {**CANDIDATE, "sdpMLineIndex": "198.51.100.23"}}),
        ("offer", {"to": "198.51.100.23\n", "offer": {"type": "offer", "sdp": secret_sdp}}),
    ]
    for event, payload in payloads:
        with pytest.raises(InvalidPayload) as caught:
            parse_relay(event, (payload,))
        assert "198.51.100.23" not in str(caught.value)


def test_unknown_relay_event_is_refused() -> None:
    """Only the four relay events parse."""
    with pytest.raises(InvalidPayload):
        parse_relay("broadcast", ({"to": "b"},))

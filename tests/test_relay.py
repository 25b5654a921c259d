"""Relays (offer, answer, candidate, hangup) between real clients on both transports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from service.protocol import MAX_RELAY_BYTES, MAX_SDP_LENGTH
from tests.support import answered_call, calls_work

SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
    "a=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n"
)
CANDIDATE = {
    "candidate": "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx "
    "raddr 10.0.0.2 rport 46154 generation 0",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
    "usernameFragment": "EsAw",
}
VALID: dict[str, dict[str, Any]] = {
    "offer": {"to": "bob", "offer": {"type": "offer", "sdp": SDP}},
    "answer": {"to": "bob", "answer": {"type": "answer", "sdp": SDP}},
    "candidate": {"to": "bob", "candidate": CANDIDATE},
    "hangup": {"to": "bob"},
}
Peers = Callable[..., Any]


@pytest.mark.parametrize("event", list(VALID))
async def test_relay_reaches_the_peer_with_server_stamped_from(peers: Peers, event: str) -> None:
    """Each relay event arrives under its own name, ``from`` set to the sender, other fields
    unchanged, and the sender's ack says it was delivered."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = None if event == "offer" else await answered_call(alice, bob, "alice", "bob")
    payload = {**VALID[event], "meta": {"video": True}}
    ack = await alice.call(event, payload)
    call_id = call_id or ack["callId"]
    assert ack == {"ok": True, "delivered": True,
                   **({"callId": call_id} if event == "offer" else {})}
    assert await bob.next(event) == {**payload, "from": "alice", "callId": call_id}


@pytest.mark.parametrize("event", list(VALID))
async def test_spoofed_from_is_overwritten(peers: Peers, event: str) -> None:
    """Whatever ``from`` the client writes, the peer sees the authenticated sender."""
    alice, bob = await peers("alice"), await peers("bob")
    if event != "offer":
        await answered_call(alice, bob, "alice", "bob")
    assert (await alice.call(event, {**VALID[event], "from": "carol"}))["ok"] is True
    assert (await bob.next(event))["from"] == "alice"


async def test_relay_across_transports(service: Any) -> None:
    """A websocket caller and a polling callee talk both ways."""
    from tests.support import Peer

    alice, bob = Peer(service.url, "websocket"), Peer(service.url, "polling")
    for peer, user in ((alice, "alice"), (bob, "bob")):
        await peer.connect(service.token(user))
        assert await peer.call("JoinSocket", user) == {"ok": True}
    await alice.call("offer", VALID["offer"])
    assert (await bob.next("offer"))["from"] == "alice"
    await bob.call("answer", {"to": "alice", "answer": {"type": "answer", "sdp": SDP}})
    assert (await alice.next("answer"))["from"] == "bob"
    await alice.close()
    await bob.close()


async def test_delivered_is_false_when_nobody_joined(peers: Peers) -> None:
    """A relay to a user with no joined socket acks ``delivered: false``; a connected socket
    that has not joined that room receives nothing."""
    alice = await peers("alice")
    bob = await peers("bob", join=False)
    ack = await alice.call("offer", VALID["offer"])
    assert ack == {"ok": True, "delivered": False, "callId": ack["callId"]}
    assert await bob.silent("offer")


async def test_every_device_of_the_callee_rings(peers: Peers) -> None:
    """All sockets that joined the callee's room receive the relay."""
    alice = await peers("alice")
    devices = [await peers("bob") for _ in range(3)]
    await alice.call("offer", VALID["offer"])
    for device in devices:
        assert (await device.next("offer"))["from"] == "alice"


async def test_relays_from_one_sender_arrive_in_order(peers: Peers) -> None:
    """A burst of mixed relays (emitted without waiting for acks; within the default burst
    limit of 120) arrives in the order sent."""
    alice, bob = await peers("alice"), await peers("bob")
    await answered_call(alice, bob, "alice", "bob")
    for i in range(110):
        await alice.client.emit("candidate", {**VALID["candidate"], "n": i})
        if i % 50 == 0:
            await alice.client.emit("offer", {**VALID["offer"], "n": i})
    received = [(await bob.next("candidate"))["n"] for _ in range(110)]
    assert received == list(range(110))
    assert [(await bob.next("offer"))["n"] for _ in range(3)] == [0, 50, 100]


def _malformed() -> list[Any]:
    cases: list[tuple[str, Any, str]] = [
        ("offer", None, "no-payload"),
        ("offer", "bob", "payload-is-a-string"),
        ("offer", ["bob"], "payload-is-a-list"),
        ("offer", 7, "payload-is-a-number"),
        ("offer", {"offer": {"type": "offer", "sdp": SDP}}, "missing-to"),
        ("offer", {"to": "", "offer": {"type": "offer", "sdp": SDP}}, "empty-to"),
        ("offer", {"to": "b" * 257, "offer": {"type": "offer", "sdp": SDP}}, "to-too-long"),
        ("offer", {"to": {"id": "bob"}, "offer": {"type": "offer", "sdp": SDP}}, "to-object"),
        ("offer", {"to": True, "offer": {"type": "offer", "sdp": SDP}}, "to-bool"),
        ("offer", {"to": 1.5, "offer": {"type": "offer", "sdp": SDP}}, "to-float"),
        ("offer", {"to": "bo\nb", "offer": {"type": "offer", "sdp": SDP}}, "to-control-char"),
        ("offer", {"to": "bob"}, "missing-offer"),
        ("offer", {"to": "bob", "offer": SDP}, "offer-is-a-string"),
        ("offer", {"to": "bob", "offer": {"type": "answer", "sdp": SDP}}, "offer-typed-answer"),
        ("offer", {"to": "bob", "offer": {"type": "offer"}}, "offer-without-sdp"),
        ("offer", {"to": "bob", "offer": {"type": "offer", "sdp": ""}}, "offer-empty-sdp"),
        ("offer", {"to": "bob", "offer": {"type": "offer", "sdp": 5}}, "offer-sdp-number"),
        ("offer", {"to": "bob", "offer": {"type": "offer", "sdp": "x" * (MAX_SDP_LENGTH + 1)}},
         "offer-sdp-too-long"),
        ("offer", {"to": "bob", "offer": {"type": "offer", "sdp": "v=0\ud800"}},
         "lone-surrogate-in-sdp"),
        # over the relay limit, under the transport's message limit (64 KiB)
        ("offer", {**VALID["offer"], "pad": "x" * (MAX_RELAY_BYTES + 1024)},
         "extra-fields-too-big"),
        ("offer", {**VALID["offer"], "score": float("nan")}, "nan"),
        ("offer", {**VALID["offer"], "blob": b"\x00\x01"}, "binary-attachment"),
        ("answer", {"to": "bob", "answer": {"type": "offer", "sdp": SDP}}, "answer-typed-offer"),
        ("answer", {"to": "bob", "answer": {"type": "rollback", "sdp": SDP}}, "answer-rollback"),
        ("answer", {"to": "bob", "offer": {"type": "answer", "sdp": SDP}}, "answer-misnamed"),
        ("candidate", {"to": "bob"}, "missing-candidate"),
        ("candidate", {"to": "bob", "candidate": None}, "candidate-null"),
        ("candidate", {"to": "bob", "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"},
         "candidate-is-a-string"),
        ("candidate", {"to": "bob", "candidate": {**CANDIDATE, "candidate": 5}},
         "candidate-text-number"),
        ("candidate", {"to": "bob", "candidate": {"candidate": CANDIDATE["candidate"]}},
         "candidate-without-mid-or-index"),
        ("candidate", {"to": "bob", "candidate": {**CANDIDATE, "sdpMLineIndex": -1}},
         "candidate-negative-index"),
        ("candidate", {"to": "bob", "candidate": {**CANDIDATE, "sdpMLineIndex": "0"}},
         "candidate-index-string"),
        ("candidate", {"to": "bob", "candidate": {**CANDIDATE, "sdpMLineIndex": True}},
         "candidate-index-bool"),
        ("candidate", {"to": "bob", "candidate": {**CANDIDATE, "sdpMid": 0}},
         "candidate-mid-number"),
        ("candidate", {"to": "bob", "candidate": {**CANDIDATE, "candidate": "c" * 3000}},
         "candidate-too-long"),
        ("hangup", None, "hangup-no-payload"),
        ("hangup", {}, "hangup-without-to"),
        ("hangup", ("bob", "extra"), "two-arguments"),
    ]
    return [pytest.param(event, payload, id=name) for event, payload, name in cases]


@pytest.mark.parametrize(("event", "payload"), _malformed())
async def test_malformed_payload_is_refused_and_not_relayed(peers: Peers, event: str,
                                                            payload: Any) -> None:
    """A bad payload gets ``invalid_payload``, reaches nobody, and leaves both connections
    working."""
    alice, bob = await peers("alice"), await peers("bob")
    ack = await alice.call(event, payload)
    assert ack["ok"] is False
    assert ack["error"] == "invalid_payload"
    assert isinstance(ack["detail"], str)
    assert await bob.silent(event, 0.2)
    await calls_work(alice, bob)


async def test_malformed_payload_without_ack_changes_nothing(peers: Peers) -> None:
    """A bad event sent without asking for an ack is dropped silently; the sender stays
    connected and well-formed relays still flow."""
    alice, bob = await peers("alice"), await peers("bob")
    await alice.client.emit("offer", {"to": "bob", "offer": "not a description"})
    await alice.client.emit("candidate")
    assert await bob.silent("offer", 0.2)
    assert alice.client.connected
    await calls_work(alice, bob)


@pytest.mark.parametrize("candidate", [
    {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
     "sdpMid": "0", "sdpMLineIndex": 0},
    {"candidate": "", "sdpMLineIndex": 1},
    {"candidate": "", "sdpMid": "audio", "usernameFragment": "abcd"},
    {"candidate": "", "sdpMid": "0", "sdpMLineIndex": None, "serverUrl": "stun:x"},
], ids=["three-fields", "index-only", "mid-and-ufrag", "explicit-null-and-unknown"])
async def test_relay_arrives_exactly_as_sent(peers: Peers, candidate: dict[str, Any]) -> None:
    """The peer receives exactly the fields the sender sent (validated) plus ``from``:
    nothing added (no ``usernameFragment: null``), dropped or renamed; strict decoders
    (kotlinx.serialization, Swift's Codable) choke on keys they did not send."""
    alice, bob = await peers("alice"), await peers("bob")
    offer = {"to": "bob", "offer": {"type": "offer", "sdp": "v=0\r\n"}}
    ack = await alice.call("offer", offer)
    assert await bob.next("offer") == {**offer, "from": "alice", "callId": ack["callId"]}
    sent = {"to": "bob", "candidate": candidate, "callHint": {"n": 1}}
    assert (await alice.call("candidate", sent))["delivered"] is True
    assert await bob.next("candidate") == {**sent, "from": "alice", "callId": ack["callId"]}


async def test_numeric_user_ids(service: Any, transport: str) -> None:
    """Integer ids are read as their decimal string: ``JoinSocket(42)`` for ``sub: "42"`` and
    ``to: 7`` reach user ``"7"`` (and arrive as sent); a float id is refused."""
    from tests.support import Peer

    caller, callee = Peer(service.url, transport), Peer(service.url, transport)
    await caller.connect(service.token("42"))
    await callee.connect(service.token("7"))
    assert await caller.call("JoinSocket", 42) == {"ok": True}
    assert await callee.call("JoinSocket", "7") == {"ok": True}
    assert (await caller.call("JoinSocket", 42.0))["error"] == "invalid_payload"
    offer = {"to": 7, "offer": {"type": "offer", "sdp": SDP}}
    ack = await caller.call("offer", offer)
    assert ack == {"ok": True, "delivered": True, "callId": ack["callId"]}
    assert await callee.next("offer") == {**offer, "from": "42", "callId": ack["callId"]}
    assert await caller.call("hangup", {"to": 7}) == {"ok": True, "delivered": True}
    assert await callee.next("hangup") == {"to": 7, "from": "42",  # as sent
                                           "callId": ack["callId"]}
    await caller.close()
    await callee.close()

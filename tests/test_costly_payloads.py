"""Messages that are cheap to send and costly to handle (issue 10, item 2): pass-through
fields are bounded in values and depth; what is not part of the protocol, or does not fit a
connection's budget, is answered before its arguments are decoded; the limiter weighs a
message by its size."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from service.config import Rate, Secret, Settings
from service.protocol import MAX_RELAY_DEPTH, MAX_RELAY_NODES
from tests.support import SECRET, Peer, RunningService, offer_to, serving

UNLIMITED = Rate(0, 0)
Peers = Any


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("extra", "why"), [
    ({"numbers": [100] * 14_000}, "values"),               # ~56 KB of integers
    ({f"k{n}": 0 for n in range(5_900)}, "values"),          # thousands of tiny keys
    ({"deep": _nested(MAX_RELAY_DEPTH)}, "nested"),
    ({"many": [0] * MAX_RELAY_NODES}, "values"),
], ids=["59kb-of-integers", "5900-keys", "too-deep", "just-over-the-values"])
async def test_costly_pass_through_fields_are_refused(peers: Peers, extra: dict[str, Any],
                                                       why: str) -> None:
    """A relay whose extra fields hold thousands of values, or nest too deep, is refused
    ``invalid_payload`` naming the bound; nothing reaches the peer."""
    alice, bob = await peers("alice"), await peers("bob")
    ack = await alice.call("hangup", {"to": "bob", **extra})
    assert (ack["ok"], ack["error"]) == (False, "invalid_payload")
    assert why in ack["detail"]
    assert (await alice.call("offer", offer_to("bob", n=1)))["delivered"] is True
    assert (await bob.next("offer"))["n"] == 1  # the refused one never arrived
    assert await bob.silent("hangup", 0)


async def test_app_metadata_still_passes(peers: Peers) -> None:
    """What an app puts beside the protocol (a callId, a few flags, a small nested object)
    is well inside the bounds and arrives as sent."""
    alice, bob = await peers("alice"), await peers("bob")
    extra = {"video": True, "caller": {"name": "Alice", "avatar": "a.png",
                                       "tags": ["x", "y"]},
             "meta": {f"f{n}": n for n in range(40)}}
    ack = await alice.call("offer", offer_to("bob", **extra))
    assert ack["delivered"] is True
    assert await bob.next("offer") == {**offer_to("bob", **extra), "from": "alice",
                                       "callId": ack["callId"]}


async def _raw_session(service: RunningService) -> Any:
    url = service.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    ws = await websockets.connect(url)
    await ws.recv()
    await ws.send("40" + json.dumps({"token": service.token("mallory")}))
    assert str(await ws.recv()).startswith("40{")
    return ws


async def _ack(ws: Any) -> Any:
    while True:
        frame = str(await ws.recv())
        if frame.startswith("43"):
            return json.loads(frame[frame.index("["):])[0]


async def test_unknown_events_are_answered_before_decoding() -> None:
    """An unknown event is answered ``unknown_event`` from its name alone: arguments that
    are not even JSON are never decoded (before: decoded, and the session dropped as a
    protocol error)."""
    settings = Settings(jwt_secret=Secret(SECRET), limit_other=UNLIMITED)
    async with serving(settings) as service:
        ws = await _raw_session(service)
        await ws.send('4217["nothing_here",{"pad": [1, 2, 3' + ", 4" * 1000)
        assert await _ack(ws) == {"ok": False, "error": "unknown_event"}
        await ws.send('4218["offer",' + json.dumps(offer_to("nobody")) + "]")
        ack = await _ack(ws)
        assert (ack["ok"], ack["delivered"]) == (True, False)  # the session is fine
        await ws.close()


async def test_a_connection_out_of_budget_is_answered_before_decoding() -> None:
    """Once a connection's relay budget is spent, its next relays are refused from their
    name and size, without decoding them (a malformed one is refused too, not dropped)."""
    settings = Settings(jwt_secret=Secret(SECRET), limit_relays=Rate(0.001, 3),
                        limit_user_relays=UNLIMITED)
    async with serving(settings) as service:
        ws = await _raw_session(service)
        for n in range(3):
            await ws.send(f'42{n}["offer",' + json.dumps(offer_to("nobody")) + "]")
            assert (await _ack(ws))["ok"] is True
        await ws.send('429["hangup",{"to": ' + "[" * 100)
        assert (await _ack(ws))["error"] == "rate_limited"
        assert service.app.ctx.sio.eio.sockets  # not dropped as a protocol error
        await ws.close()


async def test_the_limiter_weighs_a_message_by_its_size(transport: str) -> None:
    """A relay budget of 20 takes 20 small relays, but only two of 50 KB (each costs 1 + one
    per 8 KiB): a big message costs the server more, so it spends more."""
    settings = Settings(jwt_secret=Secret(SECRET), limit_relays=Rate(0.001, 20),
                        limit_user_relays=UNLIMITED, limit_ip_connects=UNLIMITED)
    async with serving(settings) as service:
        small, big = Peer(service.url, transport), Peer(service.url, transport)
        await small.connect(service.token("small"))
        await big.connect(service.token("big"))
        oks = [(await small.call("offer", offer_to("nobody")))["ok"] for _ in range(21)]
        assert oks == [True] * 20 + [False]
        pad = "x" * 50_000
        oks = [(await big.call("offer", offer_to("no-one", pad=pad)))["ok"] for _ in range(3)]
        assert oks == [True, True, False]
        await small.close()
        await big.close()

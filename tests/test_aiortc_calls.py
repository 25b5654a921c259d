"""Real WebRTC stacks: aiortc peers signalling through the service with python-socketio,
to each other and to a Chromium page; and a callee whose signaling drops mid-setup."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from service.config import Rate, Secret, Settings
from tests.aiortc_peer import AiortcPeer
from tests.browser import ARTIFACTS, chromium, open_demo, wait_state
from tests.support import SECRET, Blackhole, RunningService, eventually, serving

CALLS = 10


@pytest.fixture
async def call_service() -> AsyncIterator[RunningService]:
    settings = Settings(jwt_secret=Secret(SECRET), demo=True, demo_tokens=True,
                        limit_ip_connects=Rate(0, 0))
    async with serving(settings) as service:
        yield service


def _record(name: str, setups: list[float], calls: int) -> None:
    record = {"stack": name, "calls": calls, "connected": len(setups),
              "setup_ms": [round(s) for s in setups],
              "setup_ms_median": round(statistics.median(setups)) if setups else None}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"calls-{name}.json").write_text(json.dumps(record) + "\n")
    print(record)


async def test_two_aiortc_peers_call_and_talk(call_service: RunningService) -> None:
    """Ten calls between two aiortc peers: each connects, a data channel opens and carries a
    message, and the hangup reaches the callee. Setup times in artifacts/calls-aiortc.json."""
    alice = AiortcPeer(call_service.url, "alice", call_service.token("alice"))
    bob = AiortcPeer(call_service.url, "bob", call_service.token("bob"))
    await alice.connect()
    await bob.connect()
    setups: list[float] = []
    try:
        for n in range(CALLS):
            channel = await alice.call("bob")
            assert channel is not None
            await asyncio.wait_for(alice.connected.wait(), 15)
            await asyncio.wait_for(bob.connected.wait(), 15)
            assert alice.setup_ms is not None
            setups.append(alice.setup_ms)
            for _ in range(100):
                if channel.readyState == "open":
                    break
                await asyncio.sleep(0.05)
            channel.send(f"hello {n}")
            assert await asyncio.wait_for(bob.messages.get(), 5) == f"hello {n}"
            await alice.hangup()
            assert await asyncio.wait_for(bob.hangups.get(), 5) == "alice"
    finally:
        _record("aiortc", setups, CALLS)
        for peer in (alice, bob):
            await peer.close_call()
            await peer.disconnect()
    assert len(setups) == CALLS


async def test_aiortc_calls_a_browser(call_service: RunningService) -> None:
    """Ten calls from an aiortc peer (sending video) to bob's Chromium demo page: each
    connects on both sides and the page decodes the video; hangups end the page's call.
    Setup times in artifacts/calls-aiortc-chromium.json."""
    alice = AiortcPeer(call_service.url, "alice", call_service.token("alice"), video=True)
    await alice.connect()
    setups: list[float] = []
    async with chromium() as browser:
        bob = await open_demo(browser, call_service.url, "bob", auto_answer=True)
        await wait_state(bob, "signaling", "connected")
        try:
            for _ in range(CALLS):
                await alice.call("bob", data_channel=False)
                await asyncio.wait_for(alice.connected.wait(), 15)
                await wait_state(bob, "pc", "connected")
                assert alice.setup_ms is not None
                setups.append(alice.setup_ms)
                deadline = time.monotonic() + 10
                while await bob.evaluate("window.demo.inboundVideoFrames()") < 5:
                    assert time.monotonic() < deadline, "no video decoded in the browser"
                    await asyncio.sleep(0.2)
                await alice.hangup()
                await bob.wait_for_function("window.demo.state.ended === 'alice hung up.'")
                await wait_state(bob, "call", "idle")
        finally:
            _record("aiortc-chromium", setups, CALLS)
            await alice.close_call()
            await alice.disconnect()
    assert len(setups) == CALLS


async def test_callee_signaling_drops_between_offer_and_answer(
        call_service: RunningService) -> None:
    """bob (aiortc) receives alice's offer, loses his signaling connection for 3 s, comes
    back, joins his room again and answers: the call connects. While he is away the call
    rings on: alice's signals are held, and replayed to bob when he joins again (the offer
    too, should he have lost it)."""
    alice = AiortcPeer(call_service.url, "alice", call_service.token("alice"))
    bob = AiortcPeer(call_service.url, "bob", call_service.token("bob"))
    bob.auto_answer = False
    await alice.connect()
    await bob.connect()
    try:
        channel = await alice.call("bob")
        offer = await asyncio.wait_for(bob.offers.get(), 5)
        await bob.sio.disconnect()
        probe = await alice.sio.call("candidate", {"to": "bob", "candidate": {
            "candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}})
        assert probe == {"ok": True, "delivered": False, "held": True}  # bob is really gone
        await asyncio.sleep(3)  # the drop
        await bob.connect()
        # the offer comes again with its first seq: bob, who handled it, drops it
        event, replayed = await asyncio.wait_for(bob.repeated.get(), 5)
        assert event == "offer" and replayed["seq"] == offer["seq"]
        assert replayed["callId"] == offer["callId"] == alice.call_id
        assert bob.offers.empty()
        await bob.answer(offer)
        await asyncio.wait_for(alice.connected.wait(), 15)
        await asyncio.wait_for(bob.connected.wait(), 15)
        assert channel is not None
        for _ in range(100):
            if channel.readyState == "open":
                break
            await asyncio.sleep(0.05)
        channel.send("still there?")
        assert await asyncio.wait_for(bob.messages.get(), 5) == "still there?"
    finally:
        for peer in (alice, bob):
            await peer.close_call()
            await peer.disconnect()


async def test_browser_caller_with_callee_signaling_drop(call_service: RunningService) -> None:
    """alice's Chromium page calls bob (aiortc); bob's signaling drops for 3 s before he
    answers; what the browser trickles meanwhile is held and replayed to bob when he joins
    again (with the offer), and the call connects."""
    bob = AiortcPeer(call_service.url, "bob", call_service.token("bob"))
    bob.auto_answer = False
    await bob.connect()
    async with chromium() as browser:
        alice = await open_demo(browser, call_service.url, "alice")
        await wait_state(alice, "signaling", "connected")
        try:
            await alice.fill("#peer", "bob")
            await alice.click("#call")
            offer = await asyncio.wait_for(bob.offers.get(), 5)
            await bob.sio.disconnect()
            await asyncio.sleep(3)  # the drop
            await bob.connect()
            # the offer again, with its first seq: dropped as a repeat
            event, replayed = await asyncio.wait_for(bob.repeated.get(), 5)
            assert event == "offer" and replayed["seq"] == offer["seq"]
            assert replayed["callId"] == offer["callId"]
            await bob.answer(offer)
            await asyncio.wait_for(bob.connected.wait(), 15)
            await wait_state(alice, "pc", "connected")
        finally:
            await bob.close_call()
            await bob.disconnect()


async def test_an_aiortc_ice_restart_through_a_claimed_call(call_service: RunningService) -> None:
    """Two aiortc peers in a call, video flowing to bob; bob's signaling path goes silent
    both ways (a proxy of the test's stops forwarding); alice restarts ICE (a fresh peer
    connection: aiortc has no restartIce) and her offer is written to bob's dead socket. Bob
    connects again on a new connection and claims the call: he gets the offer, answers, and
    the call connects again, bob receiving frames on the new connection."""
    blackhole = await Blackhole(int(call_service.url.rsplit(":", 1)[1])).start()
    alice = AiortcPeer(call_service.url, "alice", call_service.token("alice"), video=True)
    bob = AiortcPeer(blackhole.url, "bob", call_service.token("bob"))
    await alice.connect()
    await bob.connect()
    try:
        await alice.call("bob", data_channel=False)
        await asyncio.wait_for(alice.connected.wait(), 15)
        await asyncio.wait_for(bob.connected.wait(), 15)
        await eventually(lambda: bob.frames >= 10, within=10)
        blackhole.freeze()
        ack = await alice.restart()
        assert ack["ok"] is True and ack["delivered"] is True  # written to the dead socket
        claim = await bob.reconnect(blackhole.url)
        assert claim["ok"] is True and claim["replayed"] >= 1
        await asyncio.wait_for(alice.connected.wait(), 15)
        await asyncio.wait_for(bob.connected.wait(), 15)
        frames = bob.frames
        await eventually(lambda: bob.frames >= frames + 30, within=15)
    finally:
        for peer in (alice, bob):
            await peer.close_call()
        await blackhole.stop()
        for peer in (alice, bob):
            await peer.disconnect()

"""Call state through real clients on both transports (one process, in memory): calls and
their ids, strangers refused, busy and glare, ring timeout, several devices, reconnect
grace, and an offline callee whose held offer waits for it. The same contract across two
processes on Redis is tests/test_call_cluster.py; the webhook is tests/test_webhook.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from service.config import Secret, Settings
from tests.support import (
    SECRET,
    Blackhole,
    Peer,
    RawPeer,
    RunningService,
    answer_to,
    answered_call,
    candidate_to,
    closed,
    eventually,
    offer_to,
    open_call,
    serving,
)

Peers = Callable[..., Any]


async def close_all(*peers: Peer) -> None:
    await asyncio.gather(*(p.close() for p in peers))


def settings(**overrides: Any) -> Settings:
    return Settings(jwt_secret=Secret(SECRET), **overrides)


async def test_an_offer_opens_a_call_with_an_id(peers: Peers) -> None:
    """The ack and the relayed offer carry the same, service-issued callId."""
    alice, bob = await peers("alice"), await peers("bob")
    ack = await alice.call("offer", offer_to("bob", callId="chosen-by-client"))
    assert ack == {"ok": False, "error": "not_in_call"}  # no such call: ids are the service's
    ack = await alice.call("offer", offer_to("bob"))
    assert ack["ok"] is True and ack["delivered"] is True
    assert isinstance(ack["callId"], str) and len(ack["callId"]) >= 16
    assert await bob.next("offer") == {**offer_to("bob"), "from": "alice",
                                       "callId": ack["callId"]}
    other = await open_call(await peers("carol"), None, "dave")
    assert other != ack["callId"]


@pytest.mark.parametrize("event, payload", [("candidate", candidate_to("bob")),
                                            ("answer", answer_to("bob")),
                                            ("hangup", {"to": "bob"})])
async def test_signals_to_a_stranger_are_refused(peers: Peers, event: str,
                                                 payload: dict[str, Any]) -> None:
    """No open call between the two: candidate spam, a stray answer or hangup is refused and
    nothing reaches the target."""
    mallory, bob = await peers("mallory"), await peers("bob")
    for _ in range(3):
        assert await mallory.call(event, payload) == {"ok": False, "error": "not_in_call"}
    assert await bob.silent(event)


async def test_a_third_user_cannot_join_a_call(peers: Peers) -> None:
    """Carol knows the callId of alice's call with bob: she still is not a party."""
    alice, bob, carol = await peers("alice"), await peers("bob"), await peers("carol")
    call_id = await answered_call(alice, bob, "alice", "bob")
    assert await carol.call("candidate", candidate_to("bob", callId=call_id)) == {
        "ok": False, "error": "not_in_call"}
    assert await carol.call("hangup", {"to": "alice", "callId": call_id}) == {
        "ok": False, "error": "not_in_call"}
    assert await bob.silent("candidate") and await alice.silent("hangup", 0)


async def test_call_flow_with_and_without_call_id(peers: Peers) -> None:
    """The caller trickles candidates before the answer; the callee may not (it answers
    first); after the answer both ways work, with or without the callId; a wrong callId
    is refused; hangup ends the call and is relayed with its callId."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = await open_call(alice, bob, "bob")
    assert await alice.call("candidate", candidate_to("bob", 1)) == {"ok": True,
                                                                    "delivered": True}
    assert (await bob.next("candidate"))["callId"] == call_id
    assert await bob.call("candidate", candidate_to("alice")) == {"ok": False,
                                                                  "error": "not_in_call"}
    assert await alice.call("answer", answer_to("bob")) == {"ok": False,
                                                            "error": "not_in_call"}
    assert await bob.call("answer", answer_to("alice", callId=call_id)) == {
        "ok": True, "delivered": True}
    assert await alice.next("answer") == {**answer_to("alice", callId=call_id),
                                          "from": "bob"}
    assert (await bob.call("candidate", candidate_to("alice", 2)))["delivered"] is True
    assert (await alice.next("candidate"))["from"] == "bob"
    assert await bob.call("candidate", candidate_to("alice", callId="other")) == {
        "ok": False, "error": "not_in_call"}
    # renegotiation (either side) stays in the call
    ack = await bob.call("offer", offer_to("alice"))
    assert ack == {"ok": True, "delivered": True, "callId": call_id}
    assert (await alice.next("offer"))["callId"] == call_id
    assert (await alice.call("answer", answer_to("bob")))["delivered"] is True
    assert (await bob.next("answer"))["callId"] == call_id
    assert await alice.call("hangup", {"to": "bob", "reason": "bye"}) == {"ok": True,
                                                                         "delivered": True}
    assert await bob.next("hangup") == {"to": "bob", "reason": "bye", "from": "alice",
                                        "callId": call_id}
    assert await alice.call("candidate", candidate_to("bob")) == {"ok": False,
                                                                  "error": "not_in_call"}
    assert await open_call(alice, bob, "bob") != call_id  # a new call


async def test_calling_yourself_is_refused(peers: Peers) -> None:
    phone, laptop = await peers("alice"), await peers("alice")
    ack = await phone.call("offer", offer_to("alice"))
    assert ack["ok"] is False and ack["error"] == "forbidden"
    assert await laptop.silent("offer")


async def test_invalid_call_id_is_refused(peers: Peers) -> None:
    alice, bob = await peers("alice"), await peers("bob")
    for bad in (7, "", "x" * 129, "a\nb", ["c"]):
        ack = await alice.call("offer", offer_to("bob", callId=bad))
        assert ack["ok"] is False and ack["error"] == "invalid_payload"
    assert await bob.silent("offer")


async def test_busy_callee_is_refused(peers: Peers) -> None:
    """Bob is being called by alice: carol's offer is refused busy (ack, and a hangup with
    reason busy for clients that ignore acks); bob hears nothing of it. After alice hangs
    up, carol gets through."""
    alice, bob, carol = await peers("alice"), await peers("bob"), await peers("carol")
    await open_call(alice, bob, "bob")
    assert await carol.call("offer", offer_to("bob")) == {"ok": False, "error": "busy"}
    busy = await carol.next("hangup")
    assert busy["from"] == "bob" and busy["reason"] == "busy" and busy["callId"]
    assert await bob.silent("offer")
    await alice.call("hangup", {"to": "bob"})
    await open_call(carol, bob, "bob")


async def test_busy_policy_ring_lets_a_second_call_through(peers_of: Any,
                                                           transport: str) -> None:
    async with serving(settings(busy_policy="ring")) as service:
        alice, bob, carol = [await peers_of(service, u, transport)
                             for u in ("alice", "bob", "carol")]
        first = await answered_call(alice, bob, "alice", "bob")
        second = await open_call(carol, bob, "bob")
        assert first != second
        await close_all(alice, bob, carol)  # before the service stops under their polls


async def test_glare_first_offer_wins(peers: Peers) -> None:
    """Both offer at once: the second offer to arrive is refused with the open call's id,
    and its sender answers that call."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = await open_call(alice, bob, "bob")
    assert await bob.call("offer", offer_to("alice")) == {"ok": False, "error": "glare",
                                                          "callId": call_id}
    assert await alice.silent("offer")
    assert (await bob.call("answer", answer_to("alice", callId=call_id)))["delivered"]
    assert (await alice.next("answer"))["callId"] == call_id


async def test_unanswered_call_times_out(peers_of: Any, transport: str) -> None:
    """After SIGNAL_RING_TIMEOUT both parties get hangup reason timeout; the call is over."""
    async with serving(settings(ring_timeout=1)) as service:
        alice, bob = (await peers_of(service, "alice", transport),
                      await peers_of(service, "bob", transport))
        call_id = await open_call(alice, bob, "bob")
        assert await alice.next("hangup", within=10) == {"from": "bob", "callId": call_id,
                                                         "reason": "timeout"}
        assert await bob.next("hangup", within=10) == {"from": "alice", "callId": call_id,
                                                       "reason": "timeout"}
        assert await bob.call("answer", answer_to("alice")) == {"ok": False,
                                                                "error": "not_in_call"}
        await close_all(alice, bob)


async def test_answered_call_does_not_time_out(peers_of: Any, transport: str) -> None:
    async with serving(settings(ring_timeout=1)) as service:
        alice, bob = (await peers_of(service, "alice", transport),
                      await peers_of(service, "bob", transport))
        await answered_call(alice, bob, "alice", "bob")
        assert await alice.silent("hangup", 2.0)
        assert (await alice.call("candidate", candidate_to("bob")))["delivered"] is True
        await close_all(alice, bob)


async def test_every_device_rings_and_the_first_answer_wins(peers: Peers) -> None:
    """Bob's phone and laptop ring; the phone answers: the laptop is told
    answered_elsewhere, alice's candidates go to the phone only, the laptop's late answer
    is refused."""
    alice, phone, laptop = await peers("alice"), await peers("bob"), await peers("bob")
    ack = await alice.call("offer", offer_to("bob"))
    call_id = ack["callId"]
    assert (await phone.next("offer"))["callId"] == call_id
    assert (await laptop.next("offer"))["callId"] == call_id
    assert (await phone.call("answer", answer_to("alice")))["delivered"] is True
    assert await laptop.next("hangup") == {"from": "alice", "callId": call_id,
                                           "reason": "answered_elsewhere"}
    assert await phone.silent("hangup", 0)
    assert (await alice.next("answer"))["callId"] == call_id
    assert (await alice.call("candidate", candidate_to("bob", 5)))["delivered"] is True
    assert (await phone.next("candidate"))["candidate"]["candidate"].startswith("candidate:5")
    assert await laptop.silent("candidate")
    assert await laptop.call("answer", answer_to("alice")) == {"ok": False,
                                                               "error": "not_in_call"}
    assert await laptop.call("candidate", candidate_to("alice")) == {
        "ok": False, "error": "not_in_call"}
    assert await alice.silent("answer")


async def test_declining_on_one_device_stops_the_others(peers: Peers) -> None:
    alice, phone, laptop = await peers("alice"), await peers("bob"), await peers("bob")
    call_id = await open_call(alice, phone, "bob")
    await laptop.next("offer")
    assert (await laptop.call("hangup", {"to": "alice", "reason": "declined"}))["delivered"]
    assert await alice.next("hangup") == {"to": "alice", "reason": "declined",
                                          "from": "bob", "callId": call_id}
    assert await phone.next("hangup") == {"from": "alice", "callId": call_id,
                                          "reason": "declined_elsewhere"}


async def test_signals_are_held_while_a_party_reconnects(peers: Peers,
                                                         service: RunningService) -> None:
    """Bob's socket drops mid-call: alice's signals are acked held; bob connects again
    within the grace period, joins, and gets them in order; then the call goes on."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = await answered_call(alice, bob, "alice", "bob")
    await closed(service, bob)
    acks = [await alice.call("candidate", candidate_to("bob", n)) for n in range(5)]
    assert acks == [{"ok": True, "delivered": False, "held": True}] * 5
    ack = await alice.call("offer", offer_to("bob", iceRestart=True))
    assert ack == {"ok": True, "delivered": False, "held": True, "callId": call_id}
    again = await peers("bob")  # joins
    for n in range(5):
        held = await again.next("candidate")
        assert held["candidate"]["candidate"].startswith(f"candidate:{n} ")
        assert held["callId"] == call_id and held["from"] == "alice"
    assert (await again.next("offer"))["iceRestart"] is True
    assert (await again.call("answer", answer_to("alice")))["delivered"] is True
    assert (await alice.next("answer"))["callId"] == call_id
    assert (await alice.call("candidate", candidate_to("bob")))["delivered"] is True
    assert (await again.next("candidate"))["callId"] == call_id


async def test_a_signal_for_a_closing_socket_is_held(peers: Peers,
                                                     service: RunningService) -> None:
    """Between a socket's session closing and the service handling its disconnect (set
    here by hand: the moment is too short to hit on purpose), a signal for it is held, not
    written to the dead socket; the party, back, gets it."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = await answered_call(alice, bob, "alice", "bob")
    sio = service.app.ctx.sio
    sock = sio.eio.sockets[sio.manager.eio_sid_from_sid(bob.client.get_sid(), "/")]
    sock.closing = True
    assert await alice.call("candidate", candidate_to("bob", 3)) == {
        "ok": True, "delivered": False, "held": True}
    sock.closing = False
    await closed(service, bob)
    again = await peers("bob")
    held = await again.next("candidate")
    assert held["callId"] == call_id and held["candidate"]["candidate"].startswith(
        "candidate:3 ")


async def test_a_gated_socket_gets_what_waited_after_the_gate(peers: Peers,
                                                              service: RunningService) -> None:
    """While a claim or a join sends a device again what it may have missed (the device is
    *gated*), what the rest of the node sends to it waits and follows, in order: a live
    message never overtakes an older one sent again (set up here by hand: the interleaving
    is too short to hit on purpose through a claim)."""
    bob = await peers("bob")
    sid = bob.client.get_sid()
    sio = service.app.ctx.sio
    go = asyncio.Event()

    async def live() -> None:  # another task: a relay from another socket, or from Redis
        await go.wait()
        await sio.emit("candidate", {"n": "live"}, to=sid)

    task = asyncio.ensure_future(live())
    async with sio.manager.gated(sid):
        go.set()
        await task  # sent, and waiting
        await sio.emit("candidate", {"n": "again"}, to=sid)  # the gate's own send: at once
        assert (await bob.next("candidate"))["n"] == "again"
        assert await bob.silent("candidate", 0.2)
    assert (await bob.next("candidate"))["n"] == "live"


async def test_a_hangup_to_an_away_party_is_held(peers: Peers, service: RunningService
                                                ) -> None:
    """Bob's socket drops mid-call; alice's candidate and her hangup are both held (before:
    the hangup was dropped and took the held candidate with it); bob, back within the grace,
    gets the candidate and then the hangup, and the call is over for both: a new call
    between them rings."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = await answered_call(alice, bob, "alice", "bob")
    await closed(service, bob)
    held = {"ok": True, "delivered": False, "held": True}
    assert await alice.call("candidate", candidate_to("bob", 7)) == held
    assert await alice.call("hangup", {"to": "bob"}) == held
    assert await alice.call("candidate", candidate_to("bob")) == {"ok": False,
                                                                  "error": "not_in_call"}
    again = await peers("bob")
    assert (await again.next("candidate"))["candidate"]["candidate"].startswith("candidate:7 ")
    assert await again.next("hangup") == {"to": "bob", "from": "alice", "callId": call_id}
    assert await again.call("answer", answer_to("alice")) == {"ok": False,
                                                              "error": "not_in_call"}
    assert await alice.silent("hangup")  # alice hung up herself: no peer_gone for her
    new_call = await open_call(alice, again, "bob")
    assert new_call != call_id


async def test_a_signal_racing_a_tcp_close_is_held(service: RunningService) -> None:
    """Bob's TCP connection closes just as alice's candidate arrives (both seen in one turn
    of the service's loop, written by hand): the candidate is acked held, never delivered
    to the dead socket, and bob's next device gets it (before: acked delivered and lost, in
    8 of 8 tries)."""
    for attempt in range(8):
        alice = await RawPeer.connect(service, "alice")
        bob = await RawPeer.connect(service, "bob")
        opened = await alice.call("offer", offer_to("bob"))
        call_id = opened["callId"]
        await bob.next("offer")
        assert (await bob.call("answer", answer_to("alice")))["delivered"] is True
        await alice.next("answer")
        ack = alice.emit("candidate", candidate_to("bob", attempt))
        # bob's FIN leaves now, behind alice's candidate and before the service's next look
        bob.writer.transport.get_extra_info("socket").shutdown(socket.SHUT_WR)
        assert await alice.ack(ack) == {"ok": True, "delivered": False, "held": True}
        again = await RawPeer.connect(service, "bob")
        held = await again.next("candidate")
        assert held["callId"] == call_id
        assert held["candidate"]["candidate"].startswith(f"candidate:{attempt} ")
        assert (await alice.call("hangup", {"to": "bob"}))["delivered"] is True
        assert (await again.next("hangup"))["callId"] == call_id
        for peer in (alice, bob, again):
            peer.close()


async def test_caller_away_too(peers: Peers, service: RunningService) -> None:
    """The caller's socket drops while it rings: the callee's answer is held for it."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = await open_call(alice, bob, "bob")
    await closed(service, alice)
    assert await bob.call("answer", answer_to("alice")) == {"ok": True, "delivered": False,
                                                            "held": True}
    again = await peers("alice")
    assert (await again.next("answer"))["callId"] == call_id


async def test_party_gone_past_grace_ends_the_call(peers_of: Any, transport: str) -> None:
    async with serving(settings(reconnect_grace=1)) as service:
        alice, bob = (await peers_of(service, "alice", transport),
                      await peers_of(service, "bob", transport))
        call_id = await answered_call(alice, bob, "alice", "bob")
        await bob.close()
        assert await alice.next("hangup", within=10) == {"from": "bob", "callId": call_id,
                                                         "reason": "peer_gone"}
        again = await peers_of(service, "bob", transport)
        assert await again.silent("candidate")
        assert await again.call("answer", answer_to("alice")) == {"ok": False,
                                                                  "error": "not_in_call"}
        await close_all(alice, again)


async def test_offline_callee_gets_the_held_offer_when_it_joins(peers: Peers) -> None:
    """Bob is not connected: the offer opens the call and is held with alice's candidates;
    bob connects, joins, gets them in order, answers, and the call goes on. A second device
    joining while it still rings gets them too."""
    alice = await peers("alice")
    ack = await alice.call("offer", offer_to("bob"))
    assert ack == {"ok": True, "delivered": False, "callId": ack["callId"]}
    call_id = ack["callId"]
    for n in range(3):
        assert await alice.call("candidate", candidate_to("bob", n)) == {
            "ok": True, "delivered": False, "held": True}
    bob = await peers("bob", join=False)
    assert await bob.silent("offer", 0.2)  # not before it joins
    assert await bob.call("JoinSocket", "bob") == {"ok": True}
    assert await bob.next("offer") == {**offer_to("bob"), "from": "alice", "callId": call_id}
    for n in range(3):
        assert (await bob.next("candidate"))["candidate"]["candidate"].startswith(
            f"candidate:{n} ")
    laptop = await peers("bob")
    assert (await laptop.next("offer"))["callId"] == call_id
    assert (await bob.call("answer", answer_to("alice")))["delivered"] is True
    assert (await alice.next("answer"))["callId"] == call_id
    assert (await laptop.next("hangup"))["reason"] == "answered_elsewhere"


async def test_held_signals_are_bounded(peers: Peers, service: RunningService) -> None:
    """A party that never comes back cannot make the service keep unbounded data: past
    100 held messages the ack says not held."""
    alice, bob = await peers("alice"), await peers("bob")
    await answered_call(alice, bob, "alice", "bob")
    await closed(service, bob)
    acks = [await alice.call("candidate", candidate_to("bob", n)) for n in range(101)]
    assert all(a == {"ok": True, "delivered": False, "held": True} for a in acks[:100])
    assert acks[100] == {"ok": True, "delivered": False}


async def test_every_call_message_carries_its_seq(peers: Peers) -> None:
    """What the service writes to a party in a call carries ``seq``, increasing from 1 per
    party and call (a message to the party's other devices takes a number too), the
    service's own hangups too; a sender's own ``seq`` is replaced (a sender cannot make the
    peer drop its next messages)."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = (await alice.call("offer", offer_to("bob", seq=999)))["callId"]
    offer = await bob.next_raw("offer")
    assert (offer["seq"], offer["callId"]) == (1, call_id)
    await bob.call("answer", answer_to("alice"))
    assert (await alice.next_raw("answer"))["seq"] == 1
    for n in range(3):
        await alice.call("candidate", candidate_to("bob", n))
    seqs = [offer["seq"]] + [(await bob.next_raw("candidate"))["seq"] for _ in range(3)]
    assert seqs == sorted(set(seqs))
    await bob.call("hangup", {"to": "alice"})
    assert (await alice.next_raw("hangup"))["seq"] == 2


async def test_a_ringing_callee_gets_the_ring_log_with_its_first_numbers(
        peers: Peers) -> None:
    """What rings on a callee's devices keeps the number it was first written with: a device
    that joins, or claims the ringing call (after a reconnect, it had the offer already),
    gets the offer and candidates again with the same ``seq``, so it can drop what it had
    (before: each replay was numbered afresh, and a repeat looked new)."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = (await alice.call("offer", offer_to("bob")))["callId"]
    for n in range(2):
        assert (await alice.call("candidate", candidate_to("bob", n, callId=call_id)))["ok"]
    first = [(await bob.next_raw(event))["seq"] for event in ("offer", "candidate",
                                                               "candidate")]
    assert first == [1, 2, 3]
    phone = await peers("bob")  # joins: the call rings there too, from its start
    assert [(await phone.next_raw(event))["seq"] for event in ("offer", "candidate",
                                                                "candidate")] == first
    ack = await bob.call("ClaimCall", {"callId": call_id, "lastSeq": 3})
    assert ack == {"ok": True, "replayed": 0}
    assert [(await bob.next_raw(event))["seq"] for event in ("offer", "candidate",
                                                              "candidate")] == first
    assert (await alice.call("candidate", candidate_to("bob", 2, callId=call_id)))["ok"]
    assert (await bob.next_raw("candidate"))["seq"] == 4


async def test_a_half_dead_socket_loses_nothing(service: RunningService) -> None:
    """Bob's connection goes silent both ways without closing (a proxy of the test's stops
    forwarding: a phone switching networks). Alice's candidates and renegotiation offer are
    acked delivered (written to bob's socket). Bob's app connects again and claims the call
    with the last seq it saw: the new socket takes the call over at once (the old one is
    closed, not left to its ping timeout) and gets, in order, every signal after that seq;
    the call goes on (before: they were lost)."""
    blackhole = await Blackhole(int(service.url.rsplit(":", 1)[1])).start()
    alice = Peer(service.url, "websocket")
    old = Peer(blackhole.url, "websocket")
    again = Peer(service.url, "websocket")
    try:
        await alice.connect(service.token("alice"))
        await old.connect(service.token("bob"))
        await alice.call("JoinSocket", "alice")
        await old.call("JoinSocket", "bob")
        call_id = await answered_call(alice, old, "alice", "bob")
        assert (await alice.call("candidate", candidate_to("bob", 0)))["delivered"] is True
        last_seq = (await old.next_raw("candidate"))["seq"]
        old_sid = old.client.get_sid()
        blackhole.freeze()
        acks = [await alice.call("candidate", candidate_to("bob", n)) for n in range(1, 6)]
        acks.append(await alice.call("offer", offer_to("bob", iceRestart=True)))
        assert all(a["ok"] and a["delivered"] for a in acks)
        await again.connect(service.token("bob"))
        assert await again.call("JoinSocket", "bob") == {"ok": True}
        ack = await again.call("ClaimCall", {"callId": call_id, "lastSeq": last_seq})
        assert ack == {"ok": True, "replayed": 6}
        seqs = []
        for n in range(1, 6):
            candidate = await again.next_raw("candidate")
            assert candidate["candidate"]["candidate"].startswith(f"candidate:{n} ")
            seqs.append(candidate["seq"])
        offer = await again.next_raw("offer")
        assert offer["iceRestart"] is True and offer["callId"] == call_id
        assert [*seqs, offer["seq"]] == list(range(last_seq + 1, last_seq + 7))
        await eventually(lambda: old_sid not in service.app.ctx.signaling.sessions)
        assert (await again.call("answer", answer_to("alice")))["delivered"] is True
        assert (await alice.next("answer"))["callId"] == call_id
        assert (await alice.call("candidate", candidate_to("bob", 9)))["delivered"] is True
        assert (await again.next("candidate"))["candidate"]["candidate"].startswith(
            "candidate:9 ")
    finally:
        await close_all(alice, again)
        await blackhole.stop()
        await old.close()


async def test_a_claim_without_last_seq_replays_what_the_outbox_keeps(peers: Peers) -> None:
    """Without ``lastSeq`` the claiming socket gets everything the party's outbox keeps
    (what was written to the call's device), the messages the old socket did get included:
    the client drops those by seq."""
    alice, bob = await peers("alice"), await peers("bob")
    call_id = await answered_call(alice, bob, "alice", "bob")
    for n in range(2):
        await alice.call("candidate", candidate_to("bob", n))
    seen = [(await bob.next_raw("candidate"))["seq"] for _ in range(2)]
    again = await peers("bob")
    assert (await again.call("ClaimCall", {"callId": call_id}))["replayed"] == 2
    assert [(await again.next_raw("candidate"))["seq"] for _ in range(2)] == seen


@pytest.mark.parametrize("claim", [{"callId": "nope"}, {"callId": "x", "lastSeq": -1},
                                   {"lastSeq": 1}, "call", {"callId": "x", "extra": 1}],
                         ids=["unknown-call", "negative-seq", "no-call-id", "string", "extra"])
async def test_a_bad_claim_is_refused_and_changes_nothing(peers: Peers, claim: Any) -> None:
    alice, bob = await peers("alice"), await peers("bob")
    call_id = await answered_call(alice, bob, "alice", "bob")
    ack = await bob.call("ClaimCall", claim)
    assert ack["ok"] is False
    assert ack["error"] == ("not_in_call" if claim == {"callId": "nope"} else "invalid_payload")
    assert (await alice.call("candidate", candidate_to("bob")))["delivered"] is True
    assert (await bob.next("candidate"))["callId"] == call_id


async def test_a_stranger_cannot_claim_a_call(peers: Peers) -> None:
    alice, bob, mallory = await peers("alice"), await peers("bob"), await peers("mallory")
    call_id = await answered_call(alice, bob, "alice", "bob")
    assert await mallory.call("ClaimCall", {"callId": call_id}) == {
        "ok": False, "error": "not_in_call"}
    assert (await alice.call("candidate", candidate_to("bob")))["delivered"] is True


async def test_a_retried_signal_is_acked_like_the_first_and_not_relayed_again(
        peers: Peers) -> None:
    """A client tags its signals with ids of its own (``signalId``): a repeat (a retry
    after a lost ack, an offline buffer replayed after a reconnect, from another socket of
    the same user) gets the first one's ack and reaches the peer once (before: twice)."""
    alice, bob = await peers("alice"), await peers("bob")
    first = await alice.call("offer", offer_to("bob", signalId="o-1"))
    assert await alice.call("offer", offer_to("bob", signalId="o-1")) == first
    offer = await bob.next("offer")
    assert offer["signalId"] == "o-1" and offer["callId"] == first["callId"]
    assert await bob.silent("offer")
    await bob.call("answer", answer_to("alice"))
    acks = [await alice.call("candidate", candidate_to("bob", 1, signalId="c-1"))
            for _ in range(3)]
    again = await peers("alice")  # the same user, another socket: its replay
    acks.append(await again.call("candidate", candidate_to("bob", 1, signalId="c-1")))
    assert acks == [{"ok": True, "delivered": True}] * 4
    assert (await bob.next("candidate"))["signalId"] == "c-1"
    assert await bob.silent("candidate")
    assert (await alice.call("candidate", candidate_to("bob", 2, signalId="c-2")))[
        "delivered"] is True
    assert (await bob.next("candidate"))["signalId"] == "c-2"


async def test_a_refused_signal_is_not_remembered(peers: Peers) -> None:
    """A first try that was refused (no call yet) is not what a repeat gets: the repeat,
    once there is a call, is relayed."""
    alice, bob = await peers("alice"), await peers("bob")
    assert (await alice.call("candidate", candidate_to("bob", 1, signalId="c-1")))[
        "error"] == "not_in_call"
    await answered_call(alice, bob, "alice", "bob")
    assert (await alice.call("candidate", candidate_to("bob", 1, signalId="c-1")))[
        "delivered"] is True
    assert (await bob.next("candidate"))["signalId"] == "c-1"

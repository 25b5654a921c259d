"""Call state across two ``sanic service.app`` processes on a real Redis: the parties (and
the devices of one party) on different nodes, the store and the timers cluster-wide."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis import asyncio as aioredis

from service.cluster import RedisLink, SignedRedisManager
from tests.processes import REDIS_SECRET, Node, nodes
from tests.support import Peer, answer_to, candidate_to, eventually, offer_to
from tests.test_cluster import channel, cluster_env, joined, redis_url, token

__all__ = ["channel", "redis_url"]  # fixtures


@pytest.fixture
async def short_timers(redis_url: str, channel: str) -> AsyncIterator[list[Node]]:
    env = cluster_env(redis_url, channel, SIGNAL_RING_TIMEOUT="2",
                      SIGNAL_RECONNECT_GRACE="2")
    async with nodes(env, env) as started:
        yield started


@pytest.fixture
async def made() -> AsyncIterator[list[Peer]]:
    peers: list[Peer] = []
    yield peers
    await asyncio.gather(*(p.close() for p in peers))


async def peer(made: list[Peer], node: Node, user: str, join: bool = True) -> Peer:
    if join:
        p = await joined(node.url, user)
    else:
        p = Peer(node.url, "websocket")
        await p.connect(token(user))
    made.append(p)
    return p


async def gone(node: Node, peer: Peer) -> None:
    """Close ``peer`` and wait until its node has handled the disconnect. (A signal sent in
    between is acked delivered: presence still had the socket; its node holds it when the
    socket has closed there, see the last test.)"""
    sid = peer.client.get_sid()
    await peer.close()
    await eventually(lambda: any(r["event"] == "disconnect" and r.get("sid") == sid
                                 for r in node.records()), within=10)


async def test_call_across_nodes(short_timers: list[Node], made: list[Peer]) -> None:
    """alice on one node, bob on the other: a stranger's candidates are refused, the offer
    opens a call whose id both see, the first answer wins, hangup ends it."""
    a, b = short_timers
    alice, bob, mallory = (await peer(made, a, "alice"), await peer(made, b, "bob"),
                           await peer(made, a, "mallory"))
    assert await mallory.call("candidate", candidate_to("bob")) == {"ok": False,
                                                                    "error": "not_in_call"}
    ack = await alice.call("offer", offer_to("bob"))
    assert ack["ok"] is True and ack["delivered"] is True
    call_id = ack["callId"]
    assert (await bob.next("offer"))["callId"] == call_id
    assert await bob.call("candidate", candidate_to("alice")) == {"ok": False,
                                                                  "error": "not_in_call"}
    assert await bob.call("answer", answer_to("alice")) == {"ok": True, "delivered": True}
    assert (await alice.next("answer"))["callId"] == call_id
    assert (await alice.call("candidate", candidate_to("bob")))["delivered"] is True
    assert (await bob.next("candidate"))["callId"] == call_id
    assert (await bob.call("hangup", {"to": "alice"}))["delivered"] is True
    assert (await alice.next("hangup"))["callId"] == call_id
    assert await mallory.silent("candidate", 0)
    assert await alice.call("candidate", candidate_to("bob")) == {"ok": False,
                                                                  "error": "not_in_call"}


async def test_busy_and_glare_across_nodes(short_timers: list[Node],
                                           made: list[Peer]) -> None:
    a, b = short_timers
    alice, bob, carol = (await peer(made, a, "alice"), await peer(made, b, "bob"),
                         await peer(made, b, "carol"))
    call_id = (await alice.call("offer", offer_to("bob")))["callId"]
    assert await bob.call("offer", offer_to("alice")) == {"ok": False, "error": "glare",
                                                          "callId": call_id}
    assert await carol.call("offer", offer_to("bob")) == {"ok": False, "error": "busy"}
    assert await carol.call("offer", offer_to("alice")) == {"ok": False, "error": "busy"}


async def endings(nodes: list[Node], call_id: str) -> tuple[list[str], float]:
    """The ``call_ended`` log lines of ``call_id`` on every node (their reasons), and
    ``signaling_calls_ended_total`` summed over the nodes' /metrics."""
    reasons = [r["reason"] for node in nodes for r in node.records()
               if r["event"] == "call_ended" and r.get("call") == call_id]
    total = 0.0
    async with aiohttp.ClientSession() as http:
        for node in nodes:
            async with http.get(node.url + "/metrics") as response:
                for line in (await response.text()).splitlines():
                    if line.startswith("signaling_calls_ended_total{"):
                        total += float(line.rsplit(" ", 1)[1])
    return reasons, total


async def test_ring_timeout_is_told_once(short_timers: list[Node], made: list[Peer]) -> None:
    """Both nodes sweep for expired calls; each party hears the timeout exactly once, and the
    call's end is logged and counted once, by one node (before: twice each)."""
    a, b = short_timers
    alice, bob = await peer(made, a, "alice"), await peer(made, b, "bob")
    call_id = (await alice.call("offer", offer_to("bob")))["callId"]
    expected = {"callId": call_id, "reason": "timeout"}
    assert await alice.next("hangup", within=15) == {**expected, "from": "bob"}
    assert await bob.next("hangup", within=15) == {**expected, "from": "alice"}
    assert await alice.silent("hangup", 1.0) and await bob.silent("hangup", 0)
    assert await endings(short_timers, call_id) == (["timeout"], 1.0)


async def test_devices_on_both_nodes_first_answer_wins(short_timers: list[Node],
                                                       made: list[Peer]) -> None:
    a, b = short_timers
    alice = await peer(made, a, "alice")
    phone, laptop = await peer(made, b, "bob"), await peer(made, a, "bob")
    call_id = (await alice.call("offer", offer_to("bob")))["callId"]
    await phone.next("offer")
    await laptop.next("offer")
    assert (await phone.call("answer", answer_to("alice")))["delivered"] is True
    assert await laptop.next("hangup") == {"from": "alice", "callId": call_id,
                                           "reason": "answered_elsewhere"}
    for n in range(3):
        assert (await alice.call("candidate", candidate_to("bob", n)))["delivered"] is True
    for n in range(3):
        assert (await phone.next("candidate"))["candidate"]["candidate"].startswith(
            f"candidate:{n} ")
    assert await laptop.silent("candidate")
    assert await laptop.call("answer", answer_to("alice")) == {"ok": False,
                                                               "error": "not_in_call"}


async def test_reconnect_on_the_other_node_gets_the_held_signals(
        short_timers: list[Node], made: list[Peer]) -> None:
    """bob's socket on node B drops mid-call; alice (node A) sends on, acked held; bob
    comes back on node A within the grace and gets it all in order."""
    a, b = short_timers
    alice, bob = await peer(made, a, "alice"), await peer(made, b, "bob")
    call_id = (await alice.call("offer", offer_to("bob")))["callId"]
    await bob.next("offer")
    await bob.call("answer", answer_to("alice"))
    await gone(b, bob)
    for n in range(4):
        assert await alice.call("candidate", candidate_to("bob", n)) == {
            "ok": True, "delivered": False, "held": True}
    again = await peer(made, a, "bob")
    for n in range(4):
        held: dict[str, Any] = await again.next("candidate")
        assert held["callId"] == call_id
        assert held["candidate"]["candidate"].startswith(f"candidate:{n} ")
    assert (await again.call("candidate", candidate_to("alice")))["delivered"] is True


async def test_gone_past_grace_across_nodes(short_timers: list[Node],
                                            made: list[Peer]) -> None:
    a, b = short_timers
    alice, bob = await peer(made, a, "alice"), await peer(made, b, "bob")
    call_id = (await alice.call("offer", offer_to("bob")))["callId"]
    await bob.next("offer")
    await bob.call("answer", answer_to("alice"))
    await bob.close()
    assert await alice.next("hangup", within=15) == {"from": "bob", "callId": call_id,
                                                     "reason": "peer_gone"}
    assert await alice.silent("hangup", 1.0)
    assert await endings(short_timers, call_id) == (["peer_gone"], 1.0)


async def test_offline_callee_joins_on_another_node(short_timers: list[Node],
                                                    made: list[Peer]) -> None:
    a, b = short_timers
    alice = await peer(made, a, "alice")
    ack = await alice.call("offer", offer_to("bob"))
    assert ack == {"ok": True, "delivered": False, "callId": ack["callId"]}
    assert (await alice.call("candidate", candidate_to("bob", 1)))["held"] is True
    bob = await peer(made, b, "bob")
    assert (await bob.next("offer"))["callId"] == ack["callId"]
    assert (await bob.next("candidate"))["callId"] == ack["callId"]
    assert (await bob.call("answer", answer_to("alice")))["delivered"] is True
    assert (await alice.next("answer"))["callId"] == ack["callId"]


async def test_a_signal_for_a_socket_closed_on_its_node_is_held(redis_url: str, channel: str,
                                                                made: list[Peer]) -> None:
    """A signal can leave node A for bob's socket on node B (presence still had it) and
    reach B after that socket closed there: B holds it for bob instead of writing it to a
    dead socket, and bob, back on node A, gets it. (Published here by hand, signed with
    the cluster key, to make the race happen every time.)"""
    env = cluster_env(redis_url, channel, SIGNAL_RECONNECT_GRACE="30")
    async with nodes(env, env) as (a, b):
        alice, bob = await peer(made, a, "alice"), await peer(made, b, "bob")
        call_id = (await alice.call("offer", offer_to("bob")))["callId"]
        await bob.next("offer")
        await bob.call("answer", answer_to("alice"))
        raw = aioredis.Redis.from_url(redis_url)
        member = next(m.decode() if isinstance(m, bytes) else str(m)
                      for m in await raw.smembers(f"{channel}:conns:bob"))
        sid = bob.client.get_sid()
        assert member.endswith("|" + sid)
        await gone(b, bob)
        signer = SignedRedisManager(RedisLink(redis_url, max_connections=2), channel=channel,
                                    secret=REDIS_SECRET, logger=logging.getLogger("test"))
        late = {**candidate_to("bob", 7), "from": "alice", "callId": call_id, "late": True}
        await raw.publish(channel, signer.emit_envelope("candidate", late, sid, "",
                                                        device=("bob", member)))
        again = await peer(made, a, "bob")
        assert await again.next("candidate") == late
        await signer.link.close()
        await raw.aclose()


async def test_a_change_the_cluster_could_not_carry_is_not_told_unavailable(
        redis_url: str, channel: str, made: list[Peer]) -> None:
    """Node A may not PUBLISH (a Redis ACL user without it: every publish fails, nothing
    else): alice's offer from A opens the call in Redis, its publish to bob on node B fails,
    and the ack says ``delivered: false`` for a call that is open, not ``unavailable``
    (before); bob's answer, from B, then goes through. A candidate in the answered call
    changes nothing, and its failed publish is ``unavailable`` (true: retry)."""
    admin = aioredis.Redis.from_url(redis_url)
    user = f"nopub-{channel}"
    await admin.acl_setuser(user, enabled=True, passwords=["+nopub-password"],
                            keys=["*"], channels=["*"], commands=["+@all", "-publish"])
    try:
        parts = redis_url.split("://", 1)
        denied = f"{parts[0]}://{user}:nopub-password@{parts[1].rpartition('@')[2]}"
        async with nodes(cluster_env(denied, channel),
                         cluster_env(redis_url, channel)) as (a, b):
            alice, bob = await peer(made, a, "alice"), await peer(made, b, "bob")
            ack = await alice.call("offer", offer_to("bob"))
            assert ack == {"ok": True, "delivered": False, "callId": ack["callId"]}
            assert await bob.call("answer", answer_to("alice")) == {"ok": True,
                                                                    "delivered": True}
            assert (await alice.next("answer"))["callId"] == ack["callId"]
            refused = await alice.call("candidate", candidate_to("bob"))
            assert (refused["ok"], refused["error"]) == (False, "unavailable")
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()


async def test_a_claim_and_a_repeat_across_nodes(short_timers: list[Node],
                                                 made: list[Peer]) -> None:
    """bob's socket on node B; his app comes back on node A and claims the call: the socket
    on B is closed (through the cluster), A sends again what was written to it after the
    seq he saw, from the outbox in Redis; a signal alice repeats (same signalId) through
    node B is not relayed twice."""
    a, b = short_timers
    alice, bob = await peer(made, a, "alice"), await peer(made, b, "bob")
    call_id = (await alice.call("offer", offer_to("bob")))["callId"]
    await bob.next("offer")
    await bob.call("answer", answer_to("alice"))
    await alice.call("candidate", candidate_to("bob", 0))
    last_seq = (await bob.next_raw("candidate"))["seq"]
    for n in range(1, 4):
        assert (await alice.call("candidate", candidate_to("bob", n)))["delivered"] is True
    again = await peer(made, a, "bob")
    ack = await again.call("ClaimCall", {"callId": call_id, "lastSeq": last_seq})
    assert ack == {"ok": True, "replayed": 3}
    for n in range(1, 4):
        got = await again.next_raw("candidate")
        assert got["candidate"]["candidate"].startswith(f"candidate:{n} ")
        assert got["seq"] == last_seq + n
    await eventually(lambda: not bob.client.connected, 10)
    alice_on_b = await peer(made, b, "alice")
    first = await alice.call("candidate", candidate_to("bob", 7, signalId="x-7"))
    assert await alice_on_b.call("candidate", candidate_to("bob", 7, signalId="x-7")) == first
    assert (await again.next("candidate"))["signalId"] == "x-7"
    assert await again.silent("candidate")


async def test_the_ring_log_keeps_its_numbers_across_nodes(short_timers: list[Node],
                                                           made: list[Peer], redis_url: str,
                                                           channel: str) -> None:
    """bob's phone joins on the other node while alice's call rings: it gets the offer and
    candidates with the numbers his first device got (the number is counted in Redis
    before the ring log keeps the message). A call's counters live as long as its record;
    the counter of an offer refused busy goes within a minute."""
    a, b = short_timers
    alice, bob = await peer(made, a, "alice"), await peer(made, b, "bob")
    call_id = (await alice.call("offer", offer_to("bob")))["callId"]
    assert (await alice.call("candidate", candidate_to("bob", 0, callId=call_id)))["ok"]
    first = [(await bob.next_raw(e))["seq"] for e in ("offer", "candidate")]
    phone = await peer(made, a, "bob")
    assert [(await phone.next_raw(e))["seq"] for e in ("offer", "candidate")] == first == [1, 2]
    assert await (await peer(made, b, "carol")).call("offer", offer_to("alice")) == {
        "ok": False, "error": "busy"}
    admin = aioredis.Redis.from_url(redis_url)
    try:
        ttls = {key.decode().rsplit(":", 1)[1]: await admin.ttl(key)
                async for key in admin.scan_iter(f"{channel}:seq:*")}
        assert ttls["bob"] > 3600 and ttls["alice"] <= 60, ttls
    finally:
        await admin.aclose()

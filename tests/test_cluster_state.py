"""The cluster's own state on a real Redis (issue 9, items 1 and 11): a new node admits no one
before it can be reached, replays are refused for as long as they could pass the age check,
removals during an outage are kept once each and bounded, a resync keeps what was queued
meanwhile, joined members always carry a TTL, and a quiet channel stays subscribed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from service.cluster import RedisLink, RedisPresence, SignedRedisManager
from service.cluster.presence import MAX_PENDING
from service.cluster.redis_manager import MAX_MESSAGE_AGE, ReplayWindow
from service.config import Secret, Settings
from tests.processes import REDIS_SECRET, SHARED_REDIS, free_port, start_node, stop_node
from tests.support import SECRET, Peer, eventually, offer_to, serving
from tests.test_cluster import cluster_env, token
from tests.test_relay import VALID

LOG = logging.getLogger("test")


def _channel() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


# ---- item 1: nodes started together ----

async def test_nodes_started_together_lose_no_first_call() -> None:
    """Two ``sanic service.app`` processes start at once; as soon as both accept requests,
    bob connects to node B and joins, alice (node A) sends an offer at once: it is acked
    ``delivered: true`` and arrives (before: ``delivered: false``, lost, for ~250 ms)."""
    channel = _channel()
    env = cluster_env(SHARED_REDIS, channel)
    a, b = await asyncio.gather(start_node(env, ready="/healthz"),
                                start_node(env, ready="/healthz"))
    try:
        bob, alice = Peer(b.url, "websocket"), Peer(a.url, "websocket")
        await asyncio.gather(bob.connect(token("bob")), alice.connect(token("alice")))
        assert await bob.call("JoinSocket", "bob") == {"ok": True}
        ack = await alice.call("offer", VALID["offer"])
        assert ack == {"ok": True, "delivered": True, "callId": ack["callId"]}
        assert (await bob.next("offer"))["from"] == "alice"
        await alice.close()
        await bob.close()
    finally:
        await asyncio.gather(stop_node(a), stop_node(b))


async def test_a_node_without_its_subscription_holds_joins_then_refuses() -> None:
    """While a node cannot receive cluster traffic, JoinSocket is not acked ``ok`` (it waits,
    then answers ``unavailable``), and new connections are refused ``unavailable``."""
    settings = Settings(jwt_secret=Secret(SECRET), redis_url=Secret(SHARED_REDIS),
                        redis_secret=Secret(REDIS_SECRET), redis_channel=_channel(),
                        node_ttl=2)
    async with serving(settings) as service:
        presence = service.app.ctx.signaling.presence
        await eventually(lambda: presence.live, within=5)
        peer = Peer(service.url, "websocket")
        await peer.connect(service.token("bob"))
        presence._receiving = lambda: False  # as if the subscription were down
        await eventually(lambda: not presence.live, within=5)
        assert await peer.call("JoinSocket", "bob") == {
            "ok": False, "error": "unavailable",
            "detail": "this node is not connected to the cluster; retry"}
        late = Peer(service.url, "websocket")
        with contextlib.suppress(Exception):
            await late.connect(service.token("carol"))
        assert late.refusals == [{"message": "unavailable", "data": {"reason": "unavailable"}}]
        await late.close()
        await peer.close()


# ---- item 11: replays, removals, resync, TTLs, quiet channels ----

def test_replays_are_refused_for_the_whole_age_window() -> None:
    """An id is remembered for twice the age limit after it arrived, however many messages
    pass meanwhile (before: the last 100,000, so above ~3.3k messages/s a replay inside the
    30 s window was accepted)."""
    now = [1000.0]
    window = ReplayWindow(clock=lambda: now[0])
    assert window.first_time("genuine")
    for n in range(150_000):
        assert window.first_time(f"m{n}")
    assert not window.first_time("genuine")
    now[0] += 2 * MAX_MESSAGE_AGE - 1
    assert not window.first_time("genuine")
    now[0] += 2
    assert window.first_time("genuine")  # older than any copy that could pass the age check
    assert len(window) == 1


def test_a_signed_message_opens_once() -> None:
    """Through the manager: a genuine message from another node opens once; its replay does
    not, after 150,000 others; this node's own message is recognised without a lookup."""
    link = RedisLink(SHARED_REDIS, max_connections=2)  # never connects: nothing to close
    mine = SignedRedisManager(link, channel="c", secret=REDIS_SECRET, logger=LOG)
    other = SignedRedisManager(link, channel="c", secret=REDIS_SECRET, logger=LOG)
    message = other.seal({"method": "emit", "n": 1})
    assert mine.open(message) is not None
    for n in range(150_000):
        mine._replays.first_time(f"m{n}")
    assert mine.open(message) is None
    assert mine.open(mine.seal({"method": "emit"})) == "\x00own"


async def _presence(redis_url: str = SHARED_REDIS) -> RedisPresence:
    link = RedisLink(redis_url, max_connections=4, timeout=0.3)
    presence = RedisPresence(link, prefix=_channel(), ttl=2, logger=LOG)
    presence.link = link  # type: ignore[attr-defined]  # closed by the test
    return presence


async def test_removals_during_an_outage_are_kept_once_and_bounded() -> None:
    """With Redis away, a removal is queued once however often it fails; past MAX_PENDING
    the node renames itself instead of growing, and its members under the old name count
    as a dead node's."""
    dead = await _presence(f"redis://127.0.0.1:{free_port()}/0")
    for _ in range(5):
        await dead.remove_connection("alice", "sid-1")
    assert list(dead._pending) == [(dead._conns("alice"), dead._member("sid-1")),
                                   (dead._about_key("alice"), dead._member("sid-1"))]
    for n in range(MAX_PENDING):
        await dead._remove([(dead._conns("u"), f"m{n}")])
    assert len(dead._pending) == MAX_PENDING + 2 and dead._rename
    await dead.link.close()  # type: ignore[attr-defined]

    presence = await _presence()
    try:
        await presence._heartbeat()
        assert await presence.add_connection("bob", "sid-b", 0)
        await presence.join("bob", "sid-b")
        old_node = presence.node
        presence._rename = True
        await presence._heartbeat()  # renames, and writes bob under the new name
        assert presence.node != old_node
        members = await presence._redis.smembers(presence._joined_key("bob"))
        names = {(m.decode() if isinstance(m, bytes) else m).split("|")[0] for m in members}
        assert presence.node in names
        assert not await presence._redis.exists(presence._node_prefix + old_node)
    finally:
        await presence.stop()
        await presence.link.close()  # type: ignore[attr-defined]


async def test_resync_keeps_removals_queued_meanwhile() -> None:
    """A removal that fails while a resync is writing is still queued afterwards (before:
    the resync cleared it with the ones it had applied)."""
    presence = await _presence()
    try:
        presence._defer([(presence._conns("a"), "gone|1")])
        resync = asyncio.ensure_future(presence._resync())
        await asyncio.sleep(0)  # the resync has taken its batch and is talking to Redis
        presence._defer([(presence._conns("a"), "gone|2")])
        await resync
        assert list(presence._pending) == [(presence._conns("a"), "gone|2")]
    finally:
        await presence.link.close()  # type: ignore[attr-defined]


async def test_joined_and_resynced_members_carry_a_ttl() -> None:
    """JoinSocket's SADD and EXPIRE go in one MULTI/EXEC, and a resync sets the TTL too: no
    member is ever left without one."""
    presence = await _presence()
    try:
        await presence._heartbeat()
        await presence.join("carol", "sid-c")
        assert await presence._redis.ttl(presence._joined_key("carol")) > 0
        await presence._redis.persist(presence._joined_key("carol"))
        await presence._redis.delete(presence._node_key)  # as if Redis had restarted
        await presence._heartbeat()
        assert await presence._redis.ttl(presence._joined_key("carol")) > 0
    finally:
        await presence.stop()
        await presence.link.close()  # type: ignore[attr-defined]


async def test_a_quiet_channel_stays_subscribed(capture_logs: list[dict[str, Any]]) -> None:
    """Two nodes (in one process) on one channel that stays silent for three times the
    command connections' read timeout (1 s): the subscription is never lost, and the first
    relay afterwards crosses."""
    channel = _channel()
    settings = Settings(jwt_secret=Secret(SECRET), redis_url=Secret(SHARED_REDIS),
                        redis_secret=Secret(REDIS_SECRET), redis_channel=channel, node_ttl=30)
    async with serving(settings) as a, serving(settings) as b:
        for node in (a, b):
            presence: RedisPresence = node.app.ctx.signaling.presence
            await eventually(lambda: presence.live, within=5)  # noqa: B023
        alice, bob = Peer(a.url, "websocket"), Peer(b.url, "websocket")
        await alice.connect(a.token("alice"))
        await bob.connect(b.token("bob"))
        assert await bob.call("JoinSocket", "bob") == {"ok": True}
        await asyncio.sleep(3.0)  # the point of the test: nothing on the channel meanwhile
        assert (await alice.call("offer", offer_to("bob", n=1)))["delivered"] is True
        assert (await bob.next("offer"))["n"] == 1
        assert not [r for r in capture_logs if r["event"] == "redis_subscription_lost"]
        await alice.close()
        await bob.close()

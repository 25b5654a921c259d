"""Scale-out on a real Redis, with real service processes: two ``sanic service.app`` on two
ports, one with ``--workers 2``, a node killed with SIGKILL, Redis stopped and started,
SIGTERM, and forged messages on the channel."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from service.auth import mint
from service.cluster import RedisLink, SignedRedisManager
from service.config import Secret, Settings
from tests.processes import (
    REDIS_SECRET,
    SHARED_REDIS,
    Node,
    RedisServer,
    free_port,
    nodes,
    start_node,
    stop_node,
)
from tests.support import (
    SECRET,
    Peer,
    answer_to,
    answered_call,
    calls_work,
    candidate_to,
    eventually,
    eventually_true,
    offer_to,
    refusal,
)
from tests.test_relay import VALID

TOKENS = Settings(jwt_secret=Secret(SECRET))


def token(user: str, ttl: int = 600) -> str:
    return mint(TOKENS, user, ttl)


@pytest.fixture
async def redis_url() -> str:
    """The shared Redis on 127.0.0.1:6379 (scripts/test and .ci/run start it); its absence is
    a failure, not a skip."""
    client = aioredis.Redis.from_url(SHARED_REDIS)
    try:
        assert await client.ping()
    except (OSError, RedisError) as exc:
        pytest.fail(f"Redis is not reachable at {SHARED_REDIS} ({exc!r}): run scripts/test, "
                    "which starts it, or start redis-server yourself")
    finally:
        await client.aclose()
    return SHARED_REDIS


def cluster_env(redis_url: str, channel: str, **extra: str) -> dict[str, str]:
    return {"SIGNAL_JWT_SECRET": SECRET, "SIGNAL_REDIS_URL": redis_url,
            "SIGNAL_REDIS_SECRET": REDIS_SECRET, "SIGNAL_REDIS_CHANNEL": channel,
            "SIGNAL_NODE_TTL": "2", "SIGNAL_LIMIT_IP_CONNECTS": "0",
            "SIGNAL_LIMIT_IP_AUTH_FAILURES": "0", **extra}


@pytest.fixture
def channel() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pair_of_nodes(redis_url: str, channel: str) -> AsyncIterator[list[Node]]:
    env = cluster_env(redis_url, channel)
    async with nodes(env, env) as started:
        yield started


async def joined(url: str, user: str, transport: str = "websocket") -> Peer:
    peer = Peer(url, transport)
    await peer.connect(token(user))
    assert await peer.call("JoinSocket", user) == {"ok": True}
    return peer


async def test_every_relay_crosses_processes(pair_of_nodes: list[Node], transport: str) -> None:
    """alice on one process, bob on another: offer, answer, candidate and hangup arrive in
    both directions with the server's ``from``, and acks say delivered."""
    a, b = pair_of_nodes
    alice, bob = await joined(a.url, "alice", transport), await joined(b.url, "bob", transport)
    try:
        ack = await alice.call("offer", {**offer_to("bob"), "from": "mallory", "n": 1})
        call_id = ack["callId"]
        assert ack == {"ok": True, "delivered": True, "callId": call_id}
        assert await bob.next("offer") == {**offer_to("bob"), "n": 1, "from": "alice",
                                           "callId": call_id}
        back = {**answer_to("alice"), "from": "mallory"}
        assert await bob.call("answer", back) == {"ok": True, "delivered": True}
        assert await alice.next("answer") == {**answer_to("alice"), "from": "bob",
                                              "callId": call_id}
        for event, payload in (("candidate", candidate_to("bob")), ("offer", offer_to("bob")),
                               ("hangup", {"to": "bob"})):
            ack = await alice.call(event, {**payload, "from": "mallory", "n": 1})
            assert ack["delivered"] is True, event
            assert await bob.next(event) == {**payload, "n": 1, "from": "alice",
                                             "callId": call_id}
    finally:
        await alice.close()
        await bob.close()


async def test_every_device_receives_across_processes(pair_of_nodes: list[Node]) -> None:
    """bob's three devices, on both processes, each get alice's offer; alice's other
    device does not."""
    a, b = pair_of_nodes
    alice_phone = await joined(a.url, "alice")
    alice_laptop = await joined(b.url, "alice")
    devices = [await joined(a.url, "bob"), await joined(b.url, "bob"), await joined(b.url, "bob")]
    try:
        assert (await alice_phone.call("offer", VALID["offer"]))["delivered"] is True
        for device in devices:
            assert (await device.next("offer"))["from"] == "alice"
        assert await alice_laptop.silent("offer") and await alice_phone.silent("offer", 0)
    finally:
        for peer in (alice_phone, alice_laptop, *devices):
            await peer.close()


async def test_delivered_is_right_cluster_wide(pair_of_nodes: list[Node]) -> None:
    """``delivered`` follows carol's JoinSocket / LeaveSocket / disconnect on the other
    process."""
    a, b = pair_of_nodes
    alice = await joined(a.url, "alice")
    carol = Peer(b.url, "websocket")
    await carol.connect(token("carol"))
    offer = offer_to("carol")  # the call rings at carol's, joined or not
    try:
        assert (await alice.call("offer", offer))["delivered"] is False
        await carol.call("JoinSocket", "carol")
        assert (await alice.call("offer", offer))["delivered"] is True
        await carol.call("LeaveSocket", "carol")
        assert (await alice.call("offer", offer))["delivered"] is False
        await carol.call("JoinSocket", "carol")
        assert (await alice.call("offer", offer))["delivered"] is True
        await carol.close()

        async def carol_gone() -> bool:
            return (await alice.call("offer", offer))["delivered"] is False

        # node B forgets carol's socket when it sees the disconnect: soon, not at once
        await eventually_true(carol_gone, within=10)
    finally:
        await alice.close()
        await carol.close()


async def test_connection_cap_holds_cluster_wide(redis_url: str, channel: str) -> None:
    """With SIGNAL_MAX_CONNECTIONS_PER_USER=2, a third connection of alice on either process is
    refused; once one closes, she may connect again."""
    env = cluster_env(redis_url, channel, SIGNAL_MAX_CONNECTIONS_PER_USER="2")
    async with nodes(env, env) as (a, b):
        first, second = Peer(a.url, "websocket"), Peer(b.url, "websocket")
        await first.connect(token("alice"))
        await second.connect(token("alice"))
        for url in (a.url, b.url):
            assert (await refusal(url, "websocket", token=token("alice")))["data"] == {
                "reason": "too_many_connections"}
        await first.close()
        third = Peer(b.url, "websocket")
        for _ in range(40):
            try:
                await third.connect(token("alice"))
                break
            except socketio.exceptions.ConnectionError:  # the close may not be in Redis yet
                third = Peer(b.url, "websocket")
                await asyncio.sleep(0.05)
        assert third.client.connected
        await second.close()
        await third.close()


async def test_users_of_a_killed_node_expire(pair_of_nodes: list[Node]) -> None:
    """bob's only node is killed with SIGKILL: within seconds (SIGNAL_NODE_TTL=2) relays to
    him are no longer ``delivered``; when he reconnects to the surviving node they are."""
    a, b = pair_of_nodes
    alice, bob = await joined(a.url, "alice"), await joined(b.url, "bob")
    assert (await alice.call("offer", offer_to("bob")))["delivered"] is True
    b.kill()
    killed = time.monotonic()
    while (await alice.call("offer", offer_to("bob")))["delivered"]:
        assert time.monotonic() - killed < 5, "presence of a dead node did not expire"
        await asyncio.sleep(0.1)
    expired_after = time.monotonic() - killed
    assert expired_after >= 1.0  # it was the TTL, not a clean leave
    await bob.close()
    bob = await joined(a.url, "bob")
    assert (await alice.call("offer", offer_to("bob")))["delivered"] is True
    await alice.close()
    await bob.close()


async def test_two_workers(redis_url: str, channel: str) -> None:
    """``sanic service.app --workers 2``: users on different workers reach each other;
    long-polling is refused (no sticky load balancer declared) and allowed once it is."""
    async with nodes(cluster_env(redis_url, channel), args=("--workers", "2")) as (node,):
        peers: list[Peer] = []
        worker_of: dict[str, int] = {}
        try:
            # the kernel picks the worker: connect (in bursts) until both have clients
            while len(set(worker_of.values())) < 2:
                assert len(peers) < 60, "every client landed on one worker"
                batch = await asyncio.gather(*(joined(node.url, f"u{len(peers) + n}")
                                               for n in range(6)))
                peers.extend(batch)
                await asyncio.sleep(0.1)
                worker_of = {r["user"]: r["pid"] for r in node.records()
                             if r["event"] == "connect"}
            first = next(u for u, pid in worker_of.items() if pid != worker_of["u0"])
            caller = peers[0]
            callee = next(p for p, n in zip(peers, range(len(peers)), strict=True)
                          if f"u{n}" == first)
            await calls_work(caller, callee, "u0", first)
            await answered_call(caller, callee, "u0", first)
            back = await callee.call("hangup", {"to": "u0"})
            assert back == {"ok": True, "delivered": True}
            assert (await caller.next("hangup"))["from"] == first
            async with aiohttp.ClientSession() as http, http.get(
                    f"{node.url}/socket.io/?EIO=4&transport=polling") as response:
                assert response.status == 400
        finally:
            await asyncio.gather(*(peer.close() for peer in peers))
    sticky = cluster_env(redis_url, channel, SIGNAL_STICKY_SESSIONS="true")
    async with nodes(sticky, args=("--workers", "2")) as (node,), aiohttp.ClientSession(
            ) as http, http.get(f"{node.url}/socket.io/?EIO=4&transport=polling") as response:
        assert response.status == 200


async def test_several_workers_without_redis_refuse_to_start() -> None:
    """Workers without Redis would split users into islands: start-up stops and says why."""
    with pytest.raises(AssertionError, match="need SIGNAL_REDIS_URL"):
        node = await start_node({"SIGNAL_JWT_SECRET": SECRET}, "--workers", "2")
        await stop_node(node)


async def _ready(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
        return response.status, await response.json()


async def test_redis_outage_and_recovery(channel: str) -> None:
    """Redis stops: relays are answered ``unavailable`` (not silently lost), /readyz says 503,
    /healthz 200, clients stay connected. Redis starts again (empty): delivery across the
    processes resumes by itself within seconds."""
    redis = RedisServer(free_port())
    await redis.start()
    env = cluster_env(redis.url, channel)
    try:
        async with nodes(env, env) as (a, b):
            alice, bob = await joined(a.url, "alice"), await joined(b.url, "bob")
            assert (await alice.call("offer", offer_to("bob")))["delivered"] is True
            await bob.next("offer")
            assert (await _ready(a.url))[0] == 200

            await redis.stop()
            ack = await alice.call("offer", offer_to("bob"))
            assert ack["ok"] is False and ack["error"] == "unavailable"
            status, body = await _ready(a.url)
            assert (status, body["reason"]) == (503, "redis_unreachable")
            async with aiohttp.ClientSession() as http, http.get(f"{a.url}/healthz") as r:
                assert r.status == 200
            assert alice.client.connected and bob.client.connected
            async with aiohttp.ClientSession() as http, http.get(f"{a.url}/metrics") as r:
                errors = [s for f in text_string_to_metric_families(await r.text())
                          for s in f.samples if s.name == "signaling_redis_errors_total"]
            assert sum(s.value for s in errors) > 0  # an alert can fire on it

            await redis.start()
            back = time.monotonic()
            while True:
                ack = await alice.call("offer", offer_to("bob", after="outage"))
                if ack.get("delivered"):
                    break
                assert time.monotonic() - back < 10, f"delivery did not resume: {ack}"
                await asyncio.sleep(0.2)
            while (await bob.next("offer")).get("after") != "outage":
                pass

            async def a_ready() -> bool:  # A's own subscription may come back a beat later
                return (await _ready(a.url))[0] == 200

            await eventually_true(a_ready, within=10)
            await alice.close()
            await bob.close()
            assert a.running and b.running
            # the call sweep waited while Redis was away, without a traceback every second
            assert not [r for r in a.records() if r["event"] == "call_sweep_failed"]
    finally:
        await redis.stop()


async def test_sigterm_drains_and_ends_transports_for_clients_to_reconnect(
        pair_of_nodes: list[Node]) -> None:
    """SIGTERM on alice's node: every relay it acknowledged reaches bob on the other node,
    alice's transport is ended (what socket.io clients reconnect after by themselves; not a
    ``server_disconnect``, which tells them to stay away: issue 20), the process exits in
    bounded time, and alice reconnects to the other node and takes her call back."""
    a, b = pair_of_nodes
    alice, bob = await joined(a.url, "alice"), await joined(b.url, "bob")
    await answered_call(alice, bob, "alice", "bob")
    acked = []
    for n in range(30):
        ack = await alice.call("candidate", {**VALID["candidate"], "n": n})
        if ack.get("ok"):
            acked.append(n)
    a.terminate()
    started = time.monotonic()
    await eventually(lambda: not alice.client.connected, 10)
    assert alice.inbox["server_disconnect"].empty()
    await asyncio.wait_for(a.proc.wait(), 20)
    assert time.monotonic() - started < 16
    received = [(await bob.next("candidate"))["n"] for _ in acked]
    assert received == acked == list(range(30))
    assert any(r["event"] == "shutting_down" for r in a.records())
    await alice.close()
    alice = await joined(b.url, "alice")  # takes the call back (it was held for her)
    ack = await alice.call("hangup", {"to": "bob"})
    assert ack["delivered"] is True, ack
    await alice.close()


async def test_forged_and_replayed_cluster_messages_are_dropped(redis_url: str,
                                                                channel: str) -> None:
    """Another client of the same Redis publishes on the channel: an unsigned manager
    message, one signed with another key, a stale one, and a replay of a genuine one. bob
    receives none of them (and the genuine message once)."""
    env = cluster_env(redis_url, channel)
    async with nodes(env, env) as (a, b):
        alice, bob = await joined(a.url, "alice"), await joined(b.url, "bob")
        raw = aioredis.Redis.from_url(redis_url)
        sub = raw.pubsub()
        await sub.subscribe(channel)
        await alice.call("offer", offer_to("bob", genuine=True))
        assert (await bob.next("offer"))["genuine"] is True
        genuine = None
        for _ in range(50):
            message = await sub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                genuine = message["data"]
                break
        assert genuine is not None
        forged = {"method": "emit", "event": "hangup", "data": [{"to": "bob", "from": "ceo"}],
                  "binary": False, "namespace": "/", "room": "user:bob", "skip_sid": None,
                  "callback": None, "host_id": "attacker"}
        # the same code, with another key (an attacker's) and with the real one (for a
        # correctly signed but stale message)
        other_key = SignedRedisManager(RedisLink(redis_url, max_connections=2), channel=channel,
                                       secret="not-the-cluster-secret-0123456789-xx",
                                       logger=logging.getLogger("test"))
        other_key.json = json
        real_key = SignedRedisManager(RedisLink(redis_url, max_connections=2), channel=channel,
                                      secret=REDIS_SECRET, logger=logging.getLogger("test"))
        stale_body = json.dumps(forged)
        stale_ts = time.time() - 120
        stale = json.dumps({"ts": stale_ts, "id": "old", "node": "n", "body": stale_body,
                            "sig": real_key._sign(stale_body, stale_ts, "old", "n")})
        for message in (json.dumps(forged), other_key.seal(forged), stale, genuine):
            await raw.publish(channel, message)
        assert await bob.silent("hangup", 0.5) and await bob.silent("offer", 0)
        # and /metrics says why each was dropped
        async with aiohttp.ClientSession() as http, http.get(f"{b.url}/metrics") as response:
            text = await response.text()
        counted = {s.labels["why"]: s.value
                   for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "signaling_cluster_messages_dropped_total"}
        assert counted == {"malformed": 1, "bad_signature": 1, "stale": 1, "replayed": 1}
        await cast(Any, sub).aclose()  # typed in some redis-py releases only
        await raw.aclose()
        await other_key.link.close()
        await real_key.link.close()
        await alice.close()
        await bob.close()
        dropped = [r for r in b.records() if r["event"] == "cluster_message_dropped"]
        assert dropped, "the node did not report dropping them"


async def test_readiness_without_redis_at_start(channel: str) -> None:
    """A node whose Redis is unreachable starts (and is alive) but is not ready."""
    env = cluster_env(f"redis://127.0.0.1:{free_port()}/0", channel)
    node = await start_node(env)
    try:
        status, body = await _ready(node.url)
        assert (status, body["status"], body["reason"]) == (503, "not_ready",
                                                            "redis_unreachable")
        data = await refusal(node.url, "websocket", token=token("alice"))
        assert data == {"message": "unavailable", "data": {"reason": "unavailable"}}
    finally:
        await stop_node(node)


async def test_a_leaving_node_handles_what_was_sent_to_it_before_it_goes(
        redis_url: str, channel: str) -> None:
    """``SignedRedisManager.flush`` (what a node leaving on SIGTERM waits for once it is no
    longer counted online) returns when every message published before it has been
    handled: here ten, each handled slowly. Before, the process exited with messages for its
    closed sockets unread, and a signal acked ``delivered`` to a party that was leaving was
    lost (1 run in 13 of ``benchmarks/resilience.py --only deploy_sigterm``)."""
    import socketio as sio_module

    manager = SignedRedisManager(RedisLink(redis_url, max_connections=2), channel=channel,
                                 secret=REDIS_SECRET, logger=logging.getLogger("test"))
    publisher = SignedRedisManager(RedisLink(redis_url, max_connections=2), channel=channel,
                                   secret=REDIS_SECRET, logger=logging.getLogger("test"))
    server = sio_module.AsyncServer(client_manager=manager, async_mode="asgi")
    handled: list[str] = []

    async def slow_emit(message: dict[str, Any]) -> None:
        await asyncio.sleep(0.05)
        handled.append(message["event"])

    manager._handle_emit = slow_emit  # type: ignore[method-assign]
    manager.initialize()
    try:
        await eventually(lambda: manager.subscribed, 5)
        for n in range(10):
            await publisher._publish({"method": "emit", "event": f"e{n}", "data": [{}],
                                      "namespace": "/", "room": "nobody", "skip_sid": None,
                                      "callback": None, "host_id": "another-node"})
        assert await manager.flush(5) is True
        assert handled == [f"e{n}" for n in range(10)]
    finally:
        await manager.close()
        await manager.link.close()
        await publisher.link.close()
        assert server is not None

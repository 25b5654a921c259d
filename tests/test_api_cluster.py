"""The server API cluster-wide (issue 21): two real ``sanic service.app`` nodes on a real
Redis, the backend asking one node about, and acting on, users connected to the other."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis import asyncio as aioredis

from service.auth import mint
from tests.processes import Node, nodes
from tests.support import Peer, answered_call, eventually, eventually_true, refusal
from tests.test_cluster import TOKENS, channel, cluster_env, joined, redis_url  # noqa: F401

KEY = "cluster-api-key-0123456789-0123456789-abcdef"


@pytest.fixture
async def two(redis_url: str, channel: str) -> AsyncIterator[list[Node]]:  # noqa: F811
    env = cluster_env(redis_url, channel, SIGNAL_API_KEYS=KEY, SIGNAL_LOG_LEVEL="DEBUG")
    async with nodes(env, env) as started:
        yield started


async def api(node: Node, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(
            method, f"{node.url}/api/v1{path}", json=body,
            headers={"Authorization": f"Bearer {KEY}"}) as response:
        return response.status, await response.json()


async def test_the_api_on_one_node_sees_and_acts_on_the_other(two: list[Node]) -> None:
    """Presence, notify, a user's calls and ending one, asked of node A about users on B;
    then disconnect with revoke: bob's socket on B is told why and closed, his old token is
    refused on both nodes, a newer one is not. The key never appears in a log line."""
    a, b = two
    alice, bob = await joined(a.url, "alice"), await joined(b.url, "bob")
    made = [alice, bob]
    try:
        status, answer = await api(a, "GET", "/users/bob/presence")
        assert status == 200 and answer["online"] is True
        [device] = answer["devices"]
        assert device["transport"] == "websocket" and device["joined"] is True
        assert device["device"].endswith("|" + bob.client.get_sid())

        assert await api(a, "POST", "/users/bob/notify", {"payload": {"n": 1}}) == (
            200, {"devices": 1})
        assert await bob.next("notify") == {"payload": {"n": 1}}

        call_id = await answered_call(alice, bob, "alice", "bob")
        status, answer = await api(b, "GET", "/users/alice/calls")
        assert [c["callId"] for c in answer["calls"]] == [call_id]
        assert (await api(a, "POST", "/presence", {"users": ["alice", "bob"]}))[1][
            "users"]["bob"]["inCall"] is True
        assert await api(b, "POST", f"/users/alice/calls/{call_id}/end") == (
            200, {"ended": True})
        for peer in (alice, bob):
            assert (await peer.next("hangup"))["reason"] == "ended_by_server"

        old = mint(TOKENS, "bob", 600)
        status, answer = await api(a, "POST", "/users/bob/disconnect",
                                   {"reason": "account_closed", "revoke": True})
        assert (status, answer) == (200, {"disconnected": 1, "revoked": True})
        assert await bob.next("server_disconnect") == {"reason": "account_closed"}
        await eventually(lambda: not bob.client.connected, 5)
        for node in (a, b):
            refused = await refusal(node.url, "websocket", token=old)
            assert refused["data"] == {"reason": "token_revoked"}
        newer = Peer(b.url, "websocket")
        await newer.connect(mint(TOKENS, "bob", 600, claims={"iat": int(time.time()) + 1}))
        made.append(newer)
        status, answer = await api(a, "GET", "/users/bob/presence")
        assert answer["online"] is True
        for node in (a, b):
            assert not [line for line in node.lines if KEY in line]
    finally:
        for peer in made:
            await peer.close()


async def test_a_device_on_a_node_that_died_is_not_online(
        two: list[Node], redis_url: str, channel: str) -> None:  # noqa: F811
    a, b = two
    bob = await joined(b.url, "bob")
    made = [bob]
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert (await api(a, "GET", "/users/bob/presence"))[1]["online"] is True
        b.kill()
        await b.proc.wait()

        async def one_node_left() -> bool:
            return len(await redis.keys(f"{channel}:node:*")) == 1

        await eventually_true(one_node_left, within=10)  # past SIGNAL_NODE_TTL (2 s)
        # bob back on the live node: what was known of his dead socket is pruned as his
        # connection is counted (not only when someone asks for his presence)
        again = await joined(a.url, "bob")
        made.append(again)
        about = await redis.hkeys(f"{channel}:about:bob")
        assert [(key.decode() if isinstance(key, bytes) else key).rpartition("|")[2]
                for key in about] == [again.client.get_sid()]
        [device] = (await api(a, "GET", "/users/bob/presence"))[1]["devices"]
        assert device["device"].endswith("|" + again.client.get_sid())
    finally:
        await redis.aclose()
        for peer in made:
            await peer.close()

"""``GET /metrics``: scraped over HTTP after real traffic and parsed with prometheus-client's
own parser; the numbers equal the traffic sent, in one process and with two Sanic workers
(every worker counted once, whichever answers the scrape)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import Rate, Secret, Settings
from tests.processes import nodes
from tests.support import (
    SECRET,
    Peer,
    calls_work,
    candidate_to,
    eventually,
    eventually_true,
    offer_to,
    refusal,
    serving,
)
from tests.test_cluster import channel, cluster_env, joined, redis_url

__all__ = ["channel", "redis_url"]  # fixtures
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics",
                                                         headers=headers) as response:
        return response.status, await response.text()


def parse(text: str) -> Samples:
    """Every sample, by name and labels (prometheus-client's parser)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    """A metric's samples summed over every label value."""
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_metrics_equal_the_traffic(transport: str) -> None:
    """Three connections and two refused tokens, a whole call (4 relays delivered), one
    offer held for an offline user, a stranger's candidate (not_in_call), unknown events
    past their limit, a disconnect: each number on /metrics is what was sent, and no label
    holds a user id or sid."""
    settings = Settings(jwt_secret=Secret(SECRET), limit_other=Rate(0.001, 2),
                        limit_ip_connects=Rate(0, 0))
    async with serving(settings) as service:
        peers = [Peer(service.url, transport) for _ in range(3)]
        alice, bob, carol = peers
        try:
            for peer, user in zip(peers, ("alice", "bob", "carol"), strict=True):
                await peer.connect(service.token(user))
                assert await peer.call("JoinSocket", user) == {"ok": True}
            assert (await refusal(service.url, transport, token="nope"))["data"] == {
                "reason": "token_invalid"}
            assert (await refusal(service.url, transport,
                                  token=service.token("x", ttl=-60)))["data"] == {
                "reason": "token_expired"}
            await calls_work(alice, bob)
            ack = await alice.call("offer", offer_to("dave"))
            assert (ack["delivered"], "held" in ack) == (False, False)
            assert (await carol.call("candidate", candidate_to("bob")))["error"] == (
                "not_in_call")
            errors = [(await carol.call("NoSuchEvent", 1))["error"] for _ in range(3)]
            assert errors == ["unknown_event", "unknown_event", "rate_limited"]
            bob_sid = bob.client.get_sid()
            await bob.close()

            async def settled() -> bool:
                samples = parse((await scrape(service.url))[1])
                return (value(samples, "signaling_connections", transport=transport) == 2
                        and total(samples, "signaling_disconnects_total") == 1)

            await eventually_true(settled, within=10)
            status, text = await scrape(service.url)
            assert status == 200
            samples = parse(text)
            expected = {
                ("signaling_connects_total", "result", "ok"): 3,
                ("signaling_connects_total", "result", "token_invalid"): 1,
                ("signaling_connects_total", "result", "token_expired"): 1,
                ("signaling_auth_failures_total", "reason", "token_invalid"): 1,
                ("signaling_auth_failures_total", "reason", "token_expired"): 1,
                ("signaling_relays_total", "result", "delivered"): 4,
                ("signaling_relays_total", "result", "not_delivered"): 1,
                ("signaling_rate_limited_total", "limit", "other"): 1,
                ("signaling_calls_opened_total", None, None): 2,
                ("signaling_calls_ended_total", "reason", "hangup"): 1,
            }
            for (name, label, label_value), number in expected.items():
                labels = {label: label_value} if label and label_value else {}
                assert value(samples, name, **labels) == number, (name, labels)
            events = {("JoinSocket", "ok"): 3, ("offer", "ok"): 2, ("answer", "ok"): 1,
                      ("candidate", "ok"): 1, ("candidate", "not_in_call"): 1,
                      ("hangup", "ok"): 1, ("other", "unknown_event"): 2,
                      ("other", "rate_limited"): 1}
            for (event, outcome), number in events.items():
                assert value(samples, "signaling_events_total", event=event,
                             outcome=outcome) == number, (event, outcome)
            assert value(samples, "signaling_relay_seconds_count") == 5
            assert value(samples, "signaling_relay_seconds_bucket", le="+Inf") == 5
            assert any(name == "signaling_build_info" for name, _ in samples)
            for secret in ("alice", "carol", "dave", bob_sid, "127.0.0.1"):
                assert secret not in text
        finally:
            for peer in peers:
                await peer.close()


async def test_the_connection_gauge_is_counted_when_scraped(
        transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape right after four clients connect says four, and right after one leaves,
    three (before: recounted once a second, so the first scrape said 0; the once-a-second
    count is held off here, so only the count at the scrape can say it)."""
    from service.signaling import handlers

    monkeypatch.setattr(handlers, "CONNECTION_COUNT_SECONDS", 3600.0)
    async with serving(Settings(jwt_secret=Secret(SECRET),
                                limit_ip_connects=Rate(0, 0))) as service:
        peers = [Peer(service.url, transport) for _ in range(4)]
        try:
            for n, peer in enumerate(peers):
                await peer.connect(service.token(f"user{n}"))
            samples = parse((await scrape(service.url))[1])
            assert value(samples, "signaling_connections", transport=transport) == 4
            sid = peers[0].client.get_sid()
            await peers[0].close()
            sessions = service.app.ctx.signaling.sessions
            await eventually(lambda: sid not in sessions)
            samples = parse((await scrape(service.url))[1])
            assert value(samples, "signaling_connections", transport=transport) == 3
        finally:
            await asyncio.gather(*(p.close() for p in peers))


async def test_metrics_token() -> None:
    token = "metrics-token-0123456789-0123456789-abc"
    settings = Settings(jwt_secret=Secret(SECRET), metrics_token=Secret(token))
    async with serving(settings) as service:
        assert (await scrape(service.url))[0] == 401
        assert (await scrape(service.url, "wrong"))[0] == 401
        status, text = await scrape(service.url, token)
        assert status == 200 and "signaling_build_info" in text


async def test_two_workers_are_each_counted_once(redis_url: str, channel: str) -> None:
    """``--workers 2`` (on Redis): clients land on both workers; every scrape, whichever
    worker answers it, counts all of them, once."""
    async with nodes(cluster_env(redis_url, channel), args=("--workers", "2")) as (node,):
        peers: list[Peer] = []
        try:
            worker_of: dict[str, int] = {}
            while len(set(worker_of.values())) < 2:
                assert len(peers) < 60, "every client landed on one worker"
                peers.extend(await asyncio.gather(
                    *(joined(node.url, f"u{len(peers) + n}") for n in range(4))))
                await asyncio.sleep(0.1)
                worker_of = {r["user"]: r["pid"] for r in node.records()
                             if r["event"] == "connect"}
            clients = len(peers)
            pairs = clients // 2
            for n in range(pairs):
                await calls_work(peers[2 * n], peers[2 * n + 1], f"u{2 * n}", f"u{2 * n + 1}")

            async def counted() -> bool:
                # each worker adds its counts to the shared files every second
                samples = parse((await scrape(node.url))[1])
                return (value(samples, "signaling_connections", transport="websocket")
                        == clients == value(samples, "signaling_connects_total", result="ok")
                        and value(samples, "signaling_relays_total", result="delivered")
                        == 4 * pairs)

            await eventually_true(counted, within=15)
            for _ in range(12):
                status, text = await scrape(node.url)
                assert status == 200
                samples = parse(text)
                assert value(samples, "signaling_connects_total", result="ok") == clients
                assert value(samples, "signaling_events_total", event="JoinSocket",
                             outcome="ok") == clients
                assert value(samples, "signaling_relays_total", result="delivered") == (
                    4 * pairs)
                assert value(samples, "signaling_calls_opened_total") == pairs
                assert value(samples, "signaling_connections", transport="websocket") == (
                    clients)
            pids = {r["pid"] for r in node.records() if r["event"] == "connect"}
            assert len(pids) == 2
        finally:
            await asyncio.gather(*(p.close() for p in peers))

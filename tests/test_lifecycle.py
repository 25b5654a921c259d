"""Lifecycle webhooks (call.ringing, call.answered, call.ended, call.missed, call.cancelled,
user.online, user.offline), received by a real HTTP backend (tests/backend.py) that checks
every signature; on one process, and on two real nodes on Redis, one of them killed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from service.calls.lifecycle import WORKERS
from service.config import WEBHOOK_EVENTS, Secret, Settings
from service.errors import ConfigError
from tests.backend import HOOK_SECRET, Backend, backend, in_order
from tests.processes import Node, start_node, stop_node
from tests.support import (
    SECRET,
    Peer,
    answered_call,
    candidate_to,
    closed,
    offer_to,
    open_call,
    serving,
)
from tests.test_cluster import channel, cluster_env, joined, redis_url  # noqa: F401

CALL_FIELDS = {"id", "type", "ts", "seq", "callId", "caller", "callee"}
SPEC = json.loads((Path(__file__).resolve().parent.parent / "service" / "http" / "specs"
                   / "openapi.json").read_text())["components"]["schemas"]


def as_specified(hook: Backend) -> None:
    """Every body the backend got is what openapi.json's webhooks say."""
    for body in hook.events:
        name = "IncomingCall" if body["type"] == "call.incoming" else "LifecycleEvent"
        Draft202012Validator(SPEC[name]).validate(body)


def hooked(url: str, events: tuple[str, ...] = WEBHOOK_EVENTS, **extra: Any) -> Settings:
    return Settings(jwt_secret=Secret(SECRET), webhook_url=Secret(url),
                    webhook_secret=Secret(HOOK_SECRET), webhook_events=events, **extra)


async def peer(service: Any, user: str, *, join: bool = True) -> Peer:
    p = Peer(service.url, "websocket")
    await p.connect(service.token(user))
    if join:
        assert await p.call("JoinSocket", user) == {"ok": True}
    return p


async def test_a_whole_call_is_told_in_order() -> None:
    """Ringing, answered, ended (reason, who, duration from the answer), each signed, with a
    unique id, a timestamp and the call's sequence; the users' first joins are online;
    nothing of SDP or candidates."""
    async with backend() as hook, serving(hooked(hook.url)) as service:
        alice, bob = await peer(service, "alice"), await peer(service, "bob")
        try:
            before = time.time()
            call_id = await answered_call(alice, bob, "alice", "bob")
            await alice.call("candidate", candidate_to("bob"))
            assert (await bob.call("hangup", {"to": "alice"}))["delivered"] is True
            key = f"call:{call_id}"
            await hook.wait(lambda: len(hook.of(key)) == 3)
            ringing, answered, ended = hook.of(key)
            assert [e["type"] for e in (ringing, answered, ended)] == [
                "call.ringing", "call.answered", "call.ended"]
            assert [e["seq"] for e in (ringing, answered, ended)] == [1, 2, 3]
            assert len({e["id"] for e in (ringing, answered, ended)}) == 3
            assert set(ringing) == CALL_FIELDS
            assert (ringing["caller"], ringing["callee"]) == ("alice", "bob")
            assert before - 1 <= ringing["ts"] <= answered["ts"] <= ended["ts"] <= time.time()
            assert set(answered) == CALL_FIELDS | {"ringSeconds"}
            assert (ended["reason"], ended["by"]) == ("hangup", "bob")
            assert ended["duration"] == pytest.approx(ended["ts"] - answered["ts"], abs=0.01)
            assert hook.types("user:alice") == ["user.online"]
            assert hook.types("user:bob") == ["user.online"]
            for attempt in hook.attempts:
                assert attempt["headers"]["Idempotency-Key"] == attempt["body"]["id"]
                assert attempt["headers"]["X-Signal-Event"] == attempt["body"]["type"]
            assert hook.unsigned == 0
            assert "sdp" not in str(hook.events) and "candidate:" not in str(hook.events)
            as_specified(hook)
        finally:
            await alice.close()
            await bob.close()


async def test_missed_calls_say_why() -> None:
    """Before an answer a call is missed: the caller cancelled, the callee declined, or
    nobody answered in time; never ``call.ended``."""
    async with backend() as hook, serving(hooked(hook.url, ring_timeout=1)) as service:
        alice, bob = await peer(service, "alice"), await peer(service, "bob")
        try:
            cancelled = await open_call(alice, bob, "bob")
            await alice.call("hangup", {"to": "bob"})
            declined = await open_call(alice, bob, "bob")
            await bob.call("hangup", {"to": "alice"})
            assert "reason" not in await alice.next("hangup")  # bob's own
            timed_out = await open_call(alice, bob, "bob")
            assert (await alice.next("hangup", within=5))["reason"] == "timeout"
            for call_id in (cancelled, declined, timed_out):
                await hook.wait(lambda c=call_id: len(hook.of(f"call:{c}")) == 2)
            missed = {c: hook.of(f"call:{c}")[1] for c in (cancelled, declined, timed_out)}
            assert all(hook.types(f"call:{c}") == ["call.ringing", "call.missed"]
                       for c in missed)
            assert (missed[cancelled]["reason"], missed[cancelled]["by"]) == ("cancelled",
                                                                               "alice")
            assert (missed[declined]["reason"], missed[declined]["by"]) == ("declined", "bob")
            assert (missed[timed_out]["reason"], missed[timed_out]["by"]) == ("timeout", None)
            as_specified(hook)
        finally:
            await alice.close()
            await bob.close()


async def test_a_pushed_callee_is_told_cancelled() -> None:
    """A callee woken by call.incoming: its ringing ending is call.cancelled too, whether the
    caller hung up, or a device of its answered (the backend cancels the push)."""
    async with backend() as hook, serving(hooked(hook.url)) as service:
        alice = await peer(service, "alice")
        bob: Peer | None = None
        try:
            first = (await alice.call("offer", offer_to("bob")))["callId"]
            await alice.call("hangup", {"to": "bob"})
            await hook.wait(lambda: len(hook.of(f"call:{first}")) == 3)
            assert hook.types(f"call:{first}") == ["call.ringing", "call.missed",
                                                   "call.cancelled"]
            assert hook.of(f"call:{first}")[2]["reason"] == "cancelled"
            assert [e["type"] for e in hook.events].count("call.incoming") == 1

            second = (await alice.call("offer", offer_to("bob")))["callId"]
            await hook.wait(lambda: [e["type"] for e in hook.events].count(
                "call.incoming") == 2)
            bob = await peer(service, "bob")  # woken by the push
            assert (await bob.next("offer"))["callId"] == second
            assert (await bob.call("answer", {"to": "alice", "answer": {
                "type": "answer", "sdp": "v=0"}}))["delivered"] is True
            await hook.wait(lambda: len(hook.of(f"call:{second}")) == 3)
            assert hook.types(f"call:{second}") == ["call.ringing", "call.answered",
                                                    "call.cancelled"]
            assert hook.of(f"call:{second}")[2]["reason"] == "answered"
            as_specified(hook)
        finally:
            await alice.close()
            if bob is not None:
                await bob.close()


async def test_users_go_offline_after_the_grace_only() -> None:
    """A reconnect within the grace says nothing; the last device gone past it is
    user.offline; joining again is user.online, the user's sequence going on."""
    async with backend() as hook, serving(hooked(hook.url, reconnect_grace=1)) as service:
        bob = await peer(service, "bob")
        await hook.wait(lambda: hook.types("user:bob") == ["user.online"])
        await closed(service, bob)
        bob = await peer(service, "bob")  # back within the grace
        second = await peer(service, "bob")  # a second device
        await closed(service, bob)
        await asyncio.sleep(1.5)  # (a grace passes: nothing is to happen)
        assert hook.types("user:bob") == ["user.online"]
        await closed(service, second)
        await hook.wait(lambda: hook.types("user:bob") == ["user.online", "user.offline"])
        bob = await peer(service, "bob")
        await hook.wait(lambda: len(hook.of("user:bob")) == 3)
        # leaving the room is going too (the socket stays: it cannot be called)
        assert await bob.call("LeaveSocket", "bob") == {"ok": True}
        await hook.wait(lambda: len(hook.of("user:bob")) == 4)
        await bob.close()
        assert [e["seq"] for e in hook.of("user:bob")] == [1, 2, 3, 4]
        assert hook.types("user:bob")[2:] == ["user.online", "user.offline"]
        as_specified(hook)


async def test_failures_are_retried_in_order_and_refusals_counted() -> None:
    """A 503 (or a 429: later, please) is retried with backoff and what follows waits for it
    (order per call); another 4xx is the backend's final answer: counted and logged as
    refused, and the next goes on."""
    events = ("call.ringing", "call.answered", "call.ended")
    async with backend(statuses=[503, 429, 200, 400]) as hook, \
            serving(hooked(hook.url, events)) as service:
        alice, bob = await peer(service, "alice"), await peer(service, "bob")
        try:
            call_id = await answered_call(alice, bob, "alice", "bob")
            await alice.call("hangup", {"to": "bob"})
            await hook.wait(lambda: len(hook.events) == 2)
            assert [(a["body"]["type"], a["status"]) for a in hook.attempts] == [
                ("call.ringing", 503), ("call.ringing", 429), ("call.ringing", 200),
                ("call.answered", 400), ("call.ended", 200)]
            assert len({a["body"]["id"] for a in hook.attempts[:3]}) == 1  # the same event
            assert hook.types(f"call:{call_id}") == ["call.ringing", "call.ended"]
            async with aiohttp.ClientSession() as http, \
                    http.get(service.url + "/metrics") as response:
                text = await response.text()
            assert ('signaling_webhook_events_total{result="retry",type="call.ringing"} 2.0'
                    in text)
            assert ('signaling_webhook_events_total{result="refused",type="call.answered"} '
                    '1.0' in text)
        finally:
            await alice.close()
            await bob.close()


async def test_a_failing_call_holds_up_no_other() -> None:
    """Calls whose events the backend keeps failing (more of them than a node sends at
    once) are retried with backoff, each after its own; another call's events go through
    meanwhile (a key backs off without holding a sender)."""
    async with backend(failing=lambda body: str(body.get("callee", "")).startswith("bad")
                       ) as hook, serving(hooked(hook.url, ("call.ringing",))) as service:
        alice = await peer(service, "alice")
        try:
            bad = WORKERS + 5
            for n in range(bad):
                await alice.call("offer", offer_to(f"bad{n}"))
            await hook.wait(lambda: len(hook.attempts) >= bad)
            good = (await alice.call("offer", offer_to("good")))["callId"]
            await hook.wait(lambda: hook.types(f"call:{good}") == ["call.ringing"], within=5)
            await hook.wait(lambda: len(hook.attempts) >= 2 * bad + 1)  # the bad, again
            assert {a["body"]["callee"] for a in hook.attempts if a["status"] == 503} == {
                f"bad{n}" for n in range(bad)}
        finally:
            await alice.close()


async def test_only_the_chosen_events_are_sent() -> None:
    """SIGNAL_WEBHOOK_EVENTS chooses: call.ended alone is all the backend hears; by default
    (call.incoming) there is no lifecycle event at all."""
    async with backend() as hook, \
            serving(hooked(hook.url, events=("call.ended",))) as service:
        alice, bob = await peer(service, "alice"), await peer(service, "bob")
        call_id = await answered_call(alice, bob, "alice", "bob")
        await alice.call("hangup", {"to": "bob"})
        await hook.wait(lambda: len(hook.events) == 1)
        assert hook.events[0]["type"] == "call.ended"
        assert hook.events[0]["seq"] == 3  # the call's number, whatever is sent
        assert hook.events[0]["callId"] == call_id
        await alice.close()
        await bob.close()
    async with backend() as hook, serving(hooked(hook.url, events=("call.incoming",))) \
            as service:
        assert service.app.ctx.signaling.calls.lifecycle is None
        alice, bob = await peer(service, "alice"), await peer(service, "bob")
        await answered_call(alice, bob, "alice", "bob")
        await alice.close()
        await bob.close()
        await asyncio.sleep(0.6)  # (a pump step or two: nothing may arrive)
        assert hook.attempts == []


def test_the_setting_names_events() -> None:
    """``all``, a list, the default (call.incoming alone), and a name that is no event."""
    def settings(events: str) -> Settings:
        return Settings.from_env({"SIGNAL_JWT_SECRET": SECRET,
                                  "SIGNAL_WEBHOOK_EVENTS": events}, env_file=None)

    assert settings("all").webhook_events == WEBHOOK_EVENTS
    assert settings("call.ended, user.online").webhook_events == ("call.ended",
                                                                  "user.online")
    with pytest.raises(ConfigError, match="WEBHOOK_EVENTS names unknown events"):
        settings("call.ended,call.rang")
    assert Settings(jwt_secret=Secret(SECRET)).webhook_events == ("call.incoming",)


def lifecycle_env(redis_url: str, channel: str, hook: Backend,  # noqa: F811
                  **extra: str) -> dict[str, str]:
    return cluster_env(redis_url, channel, SIGNAL_WEBHOOK_URL=hook.url,
                       SIGNAL_WEBHOOK_SECRET=HOOK_SECRET, SIGNAL_WEBHOOK_EVENTS="all",
                       SIGNAL_RECONNECT_GRACE="1", **extra)


async def test_two_nodes_tell_each_event_once_in_order(
        redis_url: str, channel: str) -> None:  # noqa: F811
    """alice on one node, bob on the other: each event reaches the backend once (both
    nodes send; a key is one node's at a time), in order."""
    async with backend() as hook:
        env = lifecycle_env(redis_url, channel, hook)
        a, b = await asyncio.gather(start_node(env, ready="/readyz"),
                                    start_node(env, ready="/readyz"))
        try:
            alice, bob = await joined(a.url, "alice"), await joined(b.url, "bob")
            ids = []
            for _ in range(3):
                call_id = await answered_call(alice, bob, "alice", "bob")
                await bob.call("hangup", {"to": "alice"})
                await alice.next("hangup")
                ids.append(call_id)
            await hook.wait(lambda: all(len(hook.of(f"call:{c}")) == 3 for c in ids))
            await alice.close()
            await hook.wait(lambda: hook.types("user:alice") == ["user.online",
                                                                 "user.offline"])
            await bob.close()
            await hook.wait(lambda: hook.types("user:bob") == ["user.online",
                                                               "user.offline"])
            assert len(hook.events) == len({e["id"] for e in hook.events})  # once each
            assert in_order(hook.events)
            for call_id in ids:
                assert hook.types(f"call:{call_id}") == ["call.ringing", "call.answered",
                                                         "call.ended"]
        finally:
            await asyncio.gather(stop_node(a), stop_node(b))


async def test_events_of_a_killed_node_are_sent_by_another(
        redis_url: str, channel: str) -> None:  # noqa: F811
    """The backend is down while a call happens on node A, which queues the call's events
    and retries them; A is killed (SIGKILL). Node B sends them, in order, once the backend
    is back; and tells A's users offline (nobody came back for them)."""
    async with backend(status=503) as hook:
        env = lifecycle_env(redis_url, channel, hook)
        a = await start_node(env, ready="/readyz")
        b: Node | None = None
        try:
            alice, bob = await joined(a.url, "alice"), await joined(a.url, "bob")
            call_id = await answered_call(alice, bob, "alice", "bob")
            await alice.call("hangup", {"to": "bob"})
            await hook.wait(lambda: len(hook.attempts) >= 2)  # A is retrying
            a.kill()
            await a.proc.wait()
            for p in (alice, bob):
                await p.close()
            hook.status = 200
            b = await start_node(env, ready="/readyz")
            await hook.wait(lambda: len(hook.of(f"call:{call_id}")) == 3, within=20)
            assert hook.types(f"call:{call_id}") == ["call.ringing", "call.answered",
                                                     "call.ended"]
            await hook.wait(lambda: "user.offline" in hook.types("user:alice")
                            and "user.offline" in hook.types("user:bob"), within=20)
            assert in_order(hook.events)
        finally:
            await stop_node(a)
            if b is not None:
                await stop_node(b)

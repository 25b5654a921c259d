"""Property-based tests of the event boundary (hypothesis), through a real client and server:
whatever name and arguments a client sends, it gets an acknowledgement with a known shape,
nothing is relayed unless it was valid, and a well-behaved pair keeps working."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from service.config import Rate, Secret, Settings
from service.protocol import JOIN, LEAVE, REFRESH, RELAY_EVENTS
from tests.support import SECRET, Peer, answer_to, calls_work, offer_to, serving
from tests.test_relay import CANDIDATE, SDP, VALID

UNLIMITED = Rate(0, 0)
PROTOCOL = (JOIN, LEAVE, REFRESH, *RELAY_EVENTS)
ERRORS = {"invalid_payload", "forbidden", "unknown_event", "token_invalid", "token_expired",
          "token_not_yet_valid", "token_revoked", "token_missing", "not_in_call", "busy",
          "glare"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12,
)
user_ids = st.one_of(st.sampled_from(["bob", "alice", "mallory", "", "b" * 300]),
                     st.integers(), st.text(max_size=12), json_values)
descriptions = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["offer", "answer", "pranswer", "rollback",
                                                    "x"]),
                           "sdp": st.one_of(st.just(SDP), st.text(max_size=40), json_values)}),
    json_values)
candidates = st.one_of(
    st.fixed_dictionaries({}, optional={
        "candidate": st.one_of(st.just(CANDIDATE["candidate"]), st.text(max_size=20),
                               json_values),
        "sdpMid": st.one_of(st.just("0"), json_values),
        "sdpMLineIndex": st.one_of(st.integers(-2, 70000), json_values),
        "usernameFragment": st.one_of(st.text(max_size=10), json_values)}),
    json_values)
near_valid = st.fixed_dictionaries({}, optional={
    "to": user_ids, "from": user_ids, "offer": descriptions, "answer": descriptions,
    "candidate": candidates, "extra": json_values})
arguments = st.lists(st.one_of(near_valid, json_values, st.binary(max_size=32)), max_size=3)
names = st.one_of(st.sampled_from([*PROTOCOL, "connect", "disconnect", "connect_error", ""]),
                  st.text(max_size=20))


@dataclass
class Stage:
    alice: Peer
    bob: Peer
    mallory: Peer


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    """One service (limits off: this is about parsing, test_hostile.py is about limits),
    a well-behaved pair, and the fuzzing client, reused by every example."""
    settings = Settings(jwt_secret=Secret(SECRET), limit_relays=UNLIMITED,
                        limit_user_relays=UNLIMITED, limit_rooms=UNLIMITED,
                        limit_refreshes=UNLIMITED, limit_other=UNLIMITED)
    async with serving(settings) as service:
        peers = Stage(*(Peer(service.url, t) for t in ("websocket", "polling", "websocket")))
        for peer, user in ((peers.alice, "alice"), (peers.bob, "bob"),
                           (peers.mallory, "mallory")):
            await peer.connect(service.token(user))
            assert await peer.call("JoinSocket", user) == {"ok": True}
        yield peers
        for peer in (peers.alice, peers.bob, peers.mallory):
            await peer.close()


def _expected_shape(name: str, ack: Any) -> None:
    assert isinstance(ack, dict), ack
    if ack["ok"] is True:
        assert name in PROTOCOL
        assert set(ack) <= {"ok", "delivered", "exp", "callId", "held", "notified"}
    else:
        assert ack["ok"] is False
        assert ack["error"] in ERRORS, ack
        assert set(ack) <= {"ok", "error", "detail", "callId"}


@hypothesis_settings(max_examples=120, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, args=arguments)
async def test_any_event_gets_a_well_formed_answer(stage: Stage, name: str,
                                                   args: list[Any]) -> None:
    """Any name with zero to three arbitrary arguments (nested JSON, numbers, lone
    surrogates, bytes) is answered with ``{ok: true, ...}`` only for protocol events, and a
    known error otherwise; the fuzzing client stays connected; a valid relay from the
    well-behaved pair still arrives, in order after whatever the fuzzer got through."""
    data: Any = None if not args else (args[0] if len(args) == 1 else tuple(args))
    ack = await stage.mallory.client.call(name, data, timeout=5)
    _expected_shape(name, ack)
    assert stage.mallory.client.connected
    for user in ("alice", "bob"):  # end whatever call the fuzzer opened with the pair
        await stage.mallory.call("hangup", {"to": user})
    _flush(stage)
    await calls_work(stage.alice, stage.bob)


def _flush(stage: Stage) -> None:
    for peer in (stage.alice, stage.bob, stage.mallory):
        for queue in peer.inbox.values():
            while not queue.empty():
                queue.get_nowait()


@hypothesis_settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=near_valid, event=st.sampled_from(RELAY_EVENTS))
async def test_relays_are_all_or_nothing(stage: Stage, payload: dict[str, Any],
                                         event: str) -> None:
    """A relay payload is either refused (and bob receives nothing) or delivered exactly as
    sent with the server's ``from``: never half-validated. After each attempt mallory sends
    a valid marker: mallory's events reach bob in order, so the next thing bob receives is
    the delivered payload (when accepted) and then the marker, never a refused payload.
    (Each example runs inside an answered call between bob and mallory.)"""
    call_id = await _call(stage)
    _flush(stage)  # nothing left over from an earlier example
    payload = {**payload, "to": "bob"}
    ack = await stage.mallory.call(event, payload)
    _expected_shape(event, ack)
    if ack["ok"]:
        received = await stage.bob.next(event)
        assert received == {**{k: v for k, v in payload.items() if k != "from"},
                            "from": "mallory", "callId": call_id}
        if event == "hangup":
            call_id = await _call(stage)
            _flush(stage)
    marker = {**VALID["candidate"], "marker": True}
    assert (await stage.mallory.call("candidate", marker))["ok"] is True
    assert await stage.bob.next("candidate") == {**marker, "from": "mallory",
                                                 "callId": call_id}


async def _call(stage: Stage) -> str:
    """The open call between bob and mallory (bob called, mallory answered)."""
    ack = await stage.bob.call("offer", offer_to("mallory"))
    if ack["ok"]:  # a new call (else: the call of an earlier example is still on)
        await stage.mallory.call("answer", answer_to("bob"))
    else:
        assert ack["error"] == "not_in_call", ack
        ack = await stage.mallory.call("offer", offer_to("bob"))  # renegotiation: its id
    return str(ack["callId"])

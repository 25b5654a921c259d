"""The call rules on their own (pure: no server): what the stores rely on. The contract
itself is tested through real clients in tests/test_calls.py and tests/test_call_cluster.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.calls import ACTIVE, ENDED, MAX_HELD_MESSAGES, RINGING, Call, CallRules, Ledger
from service.errors import Busy, Forbidden, Glare, NotInCall, RequestError

RULES = CallRules(ring_timeout=45, grace=15, busy_policy="reject")
OFFER = {"to": "bob", "offer": {"type": "offer", "sdp": "v=0"}}


def snapshot(ledger: Ledger) -> str:
    return json.dumps(sorted((c.to_json() for c in ledger.calls.values()),
                             key=lambda c: c["id"]))


def open_call(ledger: Ledger, answered: bool = False) -> Call:
    outcome = RULES.relay(ledger, "offer", "alice", "a1", "bob", None, OFFER, 40, 100.0)
    assert outcome.call is not None and outcome.opened
    if answered:
        RULES.relay(ledger, "answer", "bob", "b1", "alice", None, {"to": "alice"}, 40, 101.0)
    return outcome.call


def test_a_call_survives_its_json_round_trip() -> None:
    """The Redis store keeps calls as JSON: every field comes back."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    RULES.gone(ledger, "bob", "b1", 102.0)
    RULES.hold(ledger, call.id, "bob", "b1", ("candidate", {"n": 1}), 10, 103.0)
    again = Call.from_json(json.loads(json.dumps(call.to_json())))
    assert again == call and again.state == ACTIVE
    assert again.callee.held == [("candidate", {"n": 1})]
    assert again.deadline == 102.0 + 15


@pytest.mark.parametrize("case", ["self", "stranger", "glare", "busy", "callee-trickles",
                                  "caller-answers", "other-device", "stale-id"])
def test_a_refusal_changes_nothing(case: str) -> None:
    """Rules raise before they change anything (the in-memory store runs them on the live
    records, without a copy)."""
    ledger = Ledger()
    call = open_call(ledger)
    attempts: dict[str, tuple[Any, ...]] = {
        "self": ("offer", "alice", "a1", "alice", None, OFFER),
        "stranger": ("candidate", "mallory", "m1", "bob", None, {"to": "bob"}),
        "glare": ("offer", "bob", "b1", "alice", None, OFFER),
        "busy": ("offer", "carol", "c1", "bob", None, OFFER),
        "callee-trickles": ("candidate", "bob", "b1", "alice", None, {"to": "alice"}),
        "caller-answers": ("answer", "alice", "a1", "bob", None, {"to": "bob"}),
        "other-device": ("candidate", "alice", "a2", "bob", None, {"to": "bob"}),
        "stale-id": ("candidate", "alice", "a1", "bob", "old", {"to": "bob"}),
    }
    event, sender, device, to, call_id, body = attempts[case]
    before = snapshot(ledger)
    with pytest.raises(RequestError) as refused:
        RULES.relay(ledger, event, sender, device, to, call_id, body, 40, 100.5)
    expected = {"self": Forbidden, "glare": Glare, "busy": Busy}.get(case, NotInCall)
    assert type(refused.value) is expected
    assert snapshot(ledger) == before and not ledger.ended
    assert call.state == RINGING


def test_the_ring_log_and_the_hold_are_bounded() -> None:
    ledger = Ledger()
    call = open_call(ledger)
    for n in range(MAX_HELD_MESSAGES + 5):
        RULES.relay(ledger, "candidate", "alice", "a1", "bob", None, {"n": n}, 10, 100.0)
    assert len(call.ring_log) == MAX_HELD_MESSAGES  # the offer and 99 candidates
    RULES.relay(ledger, "answer", "bob", "b1", "alice", None, {}, 10, 101.0)
    assert call.ring_log == []
    RULES.gone(ledger, "bob", "b1", 102.0)
    held = [RULES.relay(ledger, "candidate", "alice", "a1", "bob", None, {}, 10, 103.0).held
            for _ in range(MAX_HELD_MESSAGES + 1)]
    assert held == [True] * MAX_HELD_MESSAGES + [False]


def test_expiry_is_idempotent() -> None:
    """Every node sweeps; the store lets the first end the call, the others find nothing."""
    ledger = Ledger()
    call = open_call(ledger)
    assert RULES.expire(ledger, call.id, 100.0 + 44) == []
    sends = RULES.expire(ledger, call.id, 100.0 + 45)
    assert [s.body["reason"] for s in sends] == ["timeout", "timeout"]
    assert RULES.expire(ledger, call.id, 100.0 + 46) == []


def test_signals_in_a_settled_call_change_nothing() -> None:
    """A candidate or renegotiation between two present parties writes nothing: on Redis it
    is decided from one read, without a transaction."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    ledger.saved.clear()
    for event, sender, device, to in (("candidate", "alice", "a1", "bob"),
                                      ("candidate", "bob", "b1", "alice"),
                                      ("offer", "bob", "b1", "alice"),
                                      ("answer", "alice", "a1", "bob")):
        outcome = RULES.relay(ledger, event, sender, device, to, call.id, {}, 10, 102.0)
        assert outcome.sends and not outcome.changed, event
    assert not ledger.changed


def test_a_hangup_for_an_away_party_is_kept_until_it_joins() -> None:
    """Alice hangs up while bob is away: the call is over (neither is busy, a new offer opens
    a new call) but bob's held signals and the hangup wait for his next device, which gets
    them in order; then nothing is left."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    RULES.gone(ledger, "bob", "b1", 102.0)
    RULES.relay(ledger, "candidate", "alice", "a1", "bob", None, {"n": 1}, 10, 103.0)
    outcome = RULES.relay(ledger, "hangup", "alice", "a1", "bob", None, {"to": "bob"}, 10,
                          104.0)
    assert outcome.held and not outcome.sends and call.state == ENDED
    assert ledger.between("alice", "bob") is None and ledger.of("alice") == []
    assert RULES.expire(ledger, call.id, 110.0) == []  # within bob's grace: kept
    sends = RULES.joined(ledger, "bob", "b2")
    assert [(s.event, s.device) for s in sends] == [("candidate", "b2"), ("hangup", "b2")]
    assert sends[1].body == {"to": "bob", "from": "alice", "callId": call.id}
    assert call.id in ledger.ended and not ledger.of("bob", ended=True)


def test_a_kept_hangup_expires_quietly() -> None:
    """If bob does not come back within the grace, the ended call goes without a word: alice
    hung up herself and hears no ``peer_gone``."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    RULES.gone(ledger, "bob", "b1", 102.0)
    RULES.relay(ledger, "hangup", "alice", "a1", "bob", None, {"to": "bob"}, 10, 104.0)
    assert RULES.expire(ledger, call.id, 102.0 + 15) == []
    assert call.id in ledger.ended and not ledger.calls


def test_a_hangup_that_reached_a_closing_socket_is_kept() -> None:
    """The hangup ended the call and then found bob's socket closing: it is kept for bob in
    an ended call of its own, as if he had been away."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    outcome = RULES.relay(ledger, "hangup", "alice", "a1", "bob", None, {"to": "bob"}, 10,
                          104.0)
    assert outcome.sends[outcome.relayed or 0].hold_in == call.id and call.id in ledger.ended
    after = Ledger()  # what the store holds now: nothing of that call
    message = (outcome.sends[0].event, outcome.sends[0].body)
    held = RULES.hold(after, call.id, "bob", "b1", message, 10, 105.0)
    assert held.held and after.calls[call.id].state == ENDED
    assert [s.event for s in RULES.joined(after, "bob", "b2")] == ["hangup"]
    assert RULES.hold(Ledger(), call.id, "bob", "b1", ("candidate", {}), 10, 105.0).call is None


def test_a_late_signal_for_an_ended_call_goes_before_its_hangup() -> None:
    """A candidate sent before the hangup that reaches the party's node after it (a cluster
    hands it back late) is held before the hangup: the hangup stays the last thing heard."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    RULES.gone(ledger, "bob", "b1", 102.0)
    RULES.relay(ledger, "hangup", "alice", "a1", "bob", None, {"to": "bob"}, 10, 104.0)
    late = RULES.hold(ledger, call.id, "bob", "b1", ("candidate", {"n": 9}), 10, 105.0)
    assert late.held
    assert [s.event for s in RULES.joined(ledger, "bob", "b2")] == ["candidate", "hangup"]


def test_a_device_found_away_that_speaks_is_back() -> None:
    """A delivery to bob's device failed (its node was briefly unreachable: the hold marks
    him away), yet that same device then sends: bob is back at once and gets what was held,
    instead of staying away, with everything for him held, until his grace ends the call
    (seen once in benchmarks/resilience.py's deploy scenario on a loaded machine)."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    RULES.hold(ledger, call.id, "bob", "b1", ("candidate", {"n": 1}), 10, 102.0)
    assert call.callee.away_until is not None
    outcome = RULES.relay(ledger, "candidate", "bob", "b1", "alice", None, {"n": 2}, 10,
                          103.0)
    assert call.callee.away_until is None and call.callee.device == "b1"
    assert [(s.event, s.user, s.device, s.body) for s in outcome.sends] == [
        ("candidate", "bob", "b1", {"n": 1}),
        ("candidate", "alice", "a1", {"n": 2, "from": "bob", "callId": call.id})]
    assert outcome.changed


def events_of(ledger: Ledger) -> list[tuple[str, int, Any, Any]]:
    return [(e.type, e.seq, e.data.get("reason"), e.data.get("by")) for e in ledger.events]


def test_a_call_ends_once_for_the_backend() -> None:
    """A hangup while the other party is away is the call's end (``call.ended``, once): the
    record kept for the away party, handed over or expiring later, tells nothing more; a
    party gone past its grace is ``peer_gone``, by that party; the server API ends it with
    no one's name."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    assert events_of(ledger) == [("call.ringing", 1, None, None),
                                 ("call.answered", 2, None, None)]
    assert ledger.events[1].data["ringSeconds"] == 1.0
    RULES.gone(ledger, "bob", "b1", 110.0)
    RULES.relay(ledger, "hangup", "alice", "a1", "bob", None, {"to": "bob"}, 20, 111.0)
    assert events_of(ledger)[2:] == [("call.ended", 3, "hangup", "alice")]
    assert ledger.events[2].data["duration"] == 10.0
    assert call.state == ENDED
    assert RULES.expire(ledger, call.id, 200.0) == [] and len(ledger.events) == 3

    ledger = Ledger()
    call = open_call(ledger, answered=True)
    RULES.gone(ledger, "bob", "b1", 110.0)
    assert RULES.expire(ledger, call.id, 126.0)  # the grace is over: alice is told
    assert events_of(ledger)[2:] == [("call.ended", 3, "peer_gone", "bob")]

    ledger = Ledger()
    call = open_call(ledger)
    RULES.pushed(ledger, call.id)
    assert RULES.end_by_server(ledger, call.id, "alice", 105.0)
    assert events_of(ledger)[1:] == [("call.missed", 2, "ended_by_server", None),
                                     ("call.cancelled", 3, "ended_by_server", None)]


def test_events_survive_the_json_round_trip() -> None:
    """The Redis store keeps the answer time, the push and the count with the call."""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    call.pushed = True
    again = Call.from_json(json.loads(json.dumps(call.to_json())))
    assert (again.answered_at, again.pushed, again.events) == (101.0, True, 2)
    older = call.to_json()
    for name in ("answered_at", "pushed", "events"):  # a record written before them
        del older[name]
    assert Call.from_json(older).events == 0


def test_a_closed_socket_does_not_take_its_call_back() -> None:
    """A party found away whose own device speaks is bound back (a delivery failed while
    its node was briefly unreachable), but not when that socket has closed since it sent
    the message (``alive`` False: a relay read before the close, handled after it): the
    party stays away and what was held for it stays held for the device that claims the
    call. Its message still reaches the other party. (The deploy harness lost one signal in
    ~200 SIGTERM runs this way: flushed into the closed socket.)"""
    ledger = Ledger()
    call = open_call(ledger, answered=True)
    RULES.gone(ledger, "alice", "a1", 110.0)  # alice's node shut her socket
    RULES.relay(ledger, "candidate", "bob", "b1", "alice", call.id, {"to": "alice"}, 20,
                111.0, seq=35)
    assert [m[1]["seq"] for m in call.caller.held] == [35]
    late = RULES.relay(ledger, "candidate", "alice", "a1", "bob", call.id, {"to": "bob"}, 20,
                       111.1, alive=False)
    assert [(s.event, s.user) for s in late.sends] == [("candidate", "bob")]
    assert call.caller.away_until is not None and len(call.caller.held) == 1
    claimed = RULES.claim(ledger, call.id, "alice", "a2")
    assert [s.body["seq"] for s in claimed.sends] == [35]
    alice = call.caller
    assert alice.device == "a2" and alice.away_until is None

    ledger = Ledger()  # the same socket, open: it is back and gets what was held
    call = open_call(ledger, answered=True)
    RULES.gone(ledger, "alice", "a1", 110.0)
    RULES.relay(ledger, "candidate", "bob", "b1", "alice", call.id, {"to": "alice"}, 20,
                111.0, seq=35)
    back = RULES.relay(ledger, "candidate", "alice", "a1", "bob", call.id, {"to": "bob"}, 20,
                       111.1)
    assert (back.sends[0].user, back.sends[0].body.get("seq")) == ("alice", 35)
    assert call.caller.away_until is None

"""JoinSocket / LeaveSocket, unknown and reserved events, through real sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support import RunningService, eventually
from tests.test_relay import VALID

Peers = Callable[..., Any]
OFFER_TO_BOB = VALID["offer"]


def delivered(ack: dict[str, Any]) -> bool:
    """Whether a relay's ack says it reached someone (an offer's ack also has its callId)."""
    assert ack["ok"] is True, ack
    return bool(ack["delivered"])


async def test_join_own_room_receives_relays(peers: Peers) -> None:
    """After ``JoinSocket(own id)`` the socket receives what is sent to that id."""
    alice = await peers("alice")
    bob = await peers("bob", join=False)
    assert not delivered(await alice.call("offer", OFFER_TO_BOB))
    assert await bob.silent("offer", 0.1)
    assert await bob.call("JoinSocket", "bob") == {"ok": True}
    assert (await bob.next("offer"))["from"] == "alice"  # held for it (tests/test_calls.py)
    assert delivered(await alice.call("offer", OFFER_TO_BOB))
    assert (await bob.next("offer"))["from"] == "alice"


async def test_joining_twice_is_harmless(peers: Peers) -> None:
    """A second JoinSocket is acknowledged and does not duplicate deliveries."""
    alice, bob = await peers("alice"), await peers("bob")
    assert await bob.call("JoinSocket", "bob") == {"ok": True}
    await alice.call("offer", OFFER_TO_BOB)
    await bob.next("offer")
    assert await bob.silent("offer")


async def test_foreign_join_is_refused(peers: Peers) -> None:
    """``JoinSocket`` with another user's id is ``forbidden`` and does not join: the intruder
    receives nothing addressed to that user."""
    alice = await peers("alice")
    mallory = await peers("mallory")
    ack = await mallory.call("JoinSocket", "bob")
    assert ack["ok"] is False
    assert ack["error"] == "forbidden"
    assert not delivered(await alice.call("offer", VALID["offer"]))
    assert await mallory.silent("offer")


async def test_sid_rooms_are_not_addressable(peers: Peers) -> None:
    """python-socketio puts every socket in a room named after its sid; a relay ``to`` a sid
    must not reach that socket."""
    alice = await peers("alice")
    bob = await peers("bob")
    bob_sid = bob.client.get_sid()
    assert not delivered(await alice.call("offer", {**OFFER_TO_BOB, "to": bob_sid}))
    assert await bob.silent("offer")


async def test_leave_stops_delivery(peers: Peers) -> None:
    """After ``LeaveSocket(own id)`` nothing more arrives, and the sender learns it."""
    alice, bob = await peers("alice"), await peers("bob")
    assert await bob.call("LeaveSocket", "bob") == {"ok": True}
    assert not delivered(await alice.call("offer", OFFER_TO_BOB))
    assert await bob.silent("offer")
    assert await bob.call("LeaveSocket", "bob") == {"ok": True}


async def test_foreign_leave_is_refused(peers: Peers) -> None:
    """``LeaveSocket`` with another id is ``forbidden`` and leaves that user's room intact."""
    alice, bob = await peers("alice"), await peers("bob")
    assert (await alice.call("LeaveSocket", "bob"))["error"] == "forbidden"
    assert delivered(await alice.call("offer", OFFER_TO_BOB))
    assert (await bob.next("offer"))["from"] == "alice"


async def test_disconnect_leaves_the_room(service: RunningService, peers: Peers) -> None:
    """A socket that disconnects stops counting as a recipient, once the server has seen it
    go (and not before: the relay just before the close is delivered)."""
    alice, bob = await peers("alice"), await peers("bob")
    assert delivered(await alice.call("offer", OFFER_TO_BOB))
    bob_sid = bob.client.get_sid()
    await bob.close()
    await eventually(lambda: bob_sid not in service.app.ctx.signaling.sessions)
    assert not delivered(await alice.call("offer", OFFER_TO_BOB))


@pytest.mark.parametrize("args", [
    pytest.param(None, id="no-argument"),
    pytest.param(("alice", "alice"), id="two-arguments"),
    pytest.param({"userID": "alice"}, id="object"),
    pytest.param("", id="empty"),
    pytest.param(True, id="bool"),
    pytest.param(1.0, id="float"),
    pytest.param(["alice"], id="list"),
])
@pytest.mark.parametrize("event", ["JoinSocket", "LeaveSocket"])
async def test_room_events_validate_their_argument(peers: Peers, event: str, args: Any) -> None:
    """Room events take exactly one user id; anything else is ``invalid_payload``."""
    alice = await peers("alice", join=False)
    ack = await alice.call(event, args)
    assert (ack["ok"], ack["error"]) == (False, "invalid_payload")


async def test_unknown_event_is_answered(peers: Peers) -> None:
    """An event outside the protocol gets ``unknown_event`` and the socket stays usable."""
    alice, bob = await peers("alice"), await peers("bob")
    assert await alice.call("JoinRoom", "bob") == {"ok": False, "error": "unknown_event"}
    assert await alice.call("offer ", VALID["offer"]) == {"ok": False, "error": "unknown_event"}
    assert (await alice.call("offer", VALID["offer"]))["delivered"] is True
    assert (await bob.next("offer"))["from"] == "alice"


@pytest.mark.parametrize("event", ["connect", "disconnect", "connect_error"])
async def test_reserved_event_names_cannot_rerun_connection_handlers(peers: Peers,
                                                                     event: str) -> None:
    """A client emitting ``connect``/``disconnect`` (with a forged environ and another user's
    token) neither re-authenticates nor disconnects the socket."""
    alice = await peers("alice")
    bob = await peers("bob")
    forged_auth = {"token": "whatever"}
    ack = await alice.call(event, ({"HTTP_AUTHORIZATION": "Bearer x"}, forged_auth))
    assert ack == {"ok": False, "error": "unknown_event"}
    assert alice.client.connected
    assert (await alice.call("JoinSocket", "bob"))["error"] == "forbidden"
    assert delivered(await alice.call("offer", OFFER_TO_BOB))
    assert (await bob.next("offer"))["from"] == "alice"


async def test_a_handler_bug_answers_internal_error(peers: Peers, monkeypatch: pytest.MonkeyPatch,
                                                    capture_logs: list[dict[str, Any]]) -> None:
    """If a handler raises unexpectedly (a fault injected here into our own parser), the
    client gets ``internal_error``, the log names the error type without its message, and the
    connection keeps working."""
    alice, bob = await peers("alice"), await peers("bob")
    address = ".".join(["198", "51", "100", "23"])

    def broken(event: str, args: Any) -> Any:
        raise RuntimeError(address)

    monkeypatch.setattr("service.signaling.handlers.parse_relay", broken)
    assert await alice.call("offer", VALID["offer"]) == {"ok": False, "error": "internal_error"}
    failure = next(r for r in capture_logs if r["event"] == "handler_failed")
    assert failure["error_type"] == "RuntimeError" and failure["name"] == "offer"
    assert address not in str(failure)
    monkeypatch.undo()
    assert (await alice.call("offer", VALID["offer"]))["delivered"] is True
    assert (await bob.next("offer"))["from"] == "alice"

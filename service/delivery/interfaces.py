"""What the handlers and the call path deliver through, whatever is behind it: who is
connected and who has joined their room (:class:`Presence`, for ``delivered`` acks and the
per-user connection cap), how a message reaches a room or one device (:class:`Delivery`), and
the room each user's sockets join (:func:`user_room`).

:mod:`service.delivery.local` is the in-memory implementation (one process);
:mod:`service.cluster` has the Redis one, which answers for the whole cluster. Both raise
:class:`PresenceUnavailable` when they cannot answer (and a delivery
:class:`DeliveryUnavailable`); the relay is then refused with ``unavailable`` rather than
guessed.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol


def user_room(user_id: str) -> str:
    """The room every socket of ``user_id`` joins with ``JoinSocket``: ``user:<id>``, never a
    bare id, so a client cannot reach a socket through the room python-socketio names after
    each sid."""
    return f"user:{user_id}"


@dataclass(frozen=True, slots=True)
class Device:
    """One connected socket of a user, as presence knows it cluster-wide."""

    #: its cluster-wide address (:meth:`Delivery.device`)
    device: str
    #: the transport it connected with ("websocket" or "polling")
    transport: str
    #: when it connected (epoch seconds)
    connected_at: float
    #: whether it has joined its user's room (can be called)
    joined: bool


def describe(transport: str, connected_at: float) -> str:
    """What presence keeps about a connection: ``transport|connected_at``."""
    return f"{transport}|{connected_at:.3f}"


def device_of(device: str, about: str, joined: bool) -> Device:
    """The :class:`Device` at ``device`` from what :func:`describe` wrote."""
    transport, _, since = about.partition("|")
    try:
        connected_at = float(since)
    except ValueError:
        connected_at = 0.0
    return Device(device, transport or "unknown", connected_at, joined)


class Delivery(Protocol):
    async def relay(self, event: str, message: dict[str, Any], to: str, room: str,
                    sid: str) -> bool:
        """Send ``message`` to every socket in ``room`` but ``sid``; whether anyone got it."""

    async def to_device(self, event: str, message: dict[str, Any], user: str,
                        device: str) -> bool:
        """Send ``message`` to one connected socket of ``user`` (``device``: its address,
        see :meth:`device`); whether it is connected."""

    async def close(self, device: str) -> None:
        """Disconnect the socket at ``device`` (wherever in the cluster it is)."""

    def gated(self, device: str) -> AbstractAsyncContextManager[None]:
        """While the block runs, what the rest of the node sends to this node's ``device``
        waits, and then follows what the block sent, in order (a claim or a join sends
        again what the device may have missed: nothing newer may overtake it)."""

    def device(self, sid: str) -> str:
        """The cluster-wide address of this node's socket ``sid``."""

    def is_open(self, sid: str) -> bool:
        """Whether this node's socket ``sid`` is still open (its close not yet seen)."""

    def sid_of(self, device: str) -> str:
        """The sid in a device address."""


class PresenceUnavailable(Exception):
    """The presence store cannot be reached."""


class DeliveryUnavailable(Exception):
    """A relay could not be handed to the other nodes."""


class Presence(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def add_connection(self, user: str, sid: str, cap: int, about: str = "") -> bool:
        """Count a new connection of ``user`` (``about``: what :func:`describe` says of it);
        False (and nothing counted) when the user already has ``cap`` connections
        (``cap == 0``: no limit)."""

    async def remove_connection(self, user: str, sid: str) -> None: ...

    async def join(self, user: str, sid: str) -> None:
        """``sid`` has joined ``user``'s room."""

    async def leave(self, user: str, sid: str) -> None: ...

    async def healthy(self) -> bool:
        """Whether the store answers now (for readiness)."""

    async def devices(self, user: str) -> list[Device]:
        """``user``'s connected sockets, cluster-wide."""

    async def revoke(self, user: str, through: int, ttl: float) -> None:
        """Refuse ``user``'s tokens issued at or before ``through`` (epoch seconds) for
        ``ttl`` seconds (the longest a token lives), cluster-wide."""

    async def revoked_through(self, user: str) -> int | None:
        """The second through which ``user``'s tokens are revoked, if they are."""

    async def wait_reachable(self, within: float) -> bool:
        """Wait up to ``within`` seconds until this node's users can be reached (on a
        cluster: it receives cluster traffic and is counted online); whether they can."""

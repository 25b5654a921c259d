"""Lifecycle events, pure: what the app's backend is told about calls and users.

A rule that changes a call records the events that change implies in its
:class:`~service.calls.Ledger`; the store commits them with the change (on Redis in the same
``MULTI``), so an event exists exactly when its change does. Each event has a unique ``id``,
its moment ``ts`` (epoch seconds), and ``seq``, counted per *key*: per call
(``call:<callId>``: ``call.ringing`` is 1) or per user (``user:<userId>``). The sender
(:mod:`service.calls.lifecycle`) delivers each key's events in ``seq`` order.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Final

from service.config import WEBHOOK_EVENTS

INCOMING: Final = "call.incoming"
RINGING: Final = "call.ringing"
ANSWERED: Final = "call.answered"
ENDED: Final = "call.ended"
MISSED: Final = "call.missed"
CANCELLED: Final = "call.cancelled"
ONLINE: Final = "user.online"
OFFLINE: Final = "user.offline"
#: every event type, in the order a reader meets them (the settings check the names)
TYPES: Final = WEBHOOK_EVENTS
assert TYPES == (INCOMING, RINGING, ANSWERED, ENDED, MISSED, CANCELLED, ONLINE, OFFLINE)
#: what ``SIGNAL_WEBHOOK_EVENTS`` is unless set: the incoming-call webhook only
DEFAULT_TYPES: Final = (INCOMING,)


@dataclass(frozen=True, slots=True)
class Event:
    """One lifecycle event: ``type`` about ``key`` (``call:<id>`` or ``user:<id>``), the
    ``seq``-th of its key, and what the backend reads (``data``)."""

    id: str
    type: str
    ts: float
    key: str
    seq: int
    data: dict[str, Any]

    def body(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        return {"id": self.id, "type": self.type, "ts": self.ts, "seq": self.seq,
                **self.data}

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, **self.body()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        rest = {k: v for k, v in data.items() if k not in ("id", "type", "ts", "seq", "key")}
        return cls(data["id"], data["type"], data["ts"], data["key"], data["seq"], rest)


def event(type_: str, key: str, seq: int, now: float, **data: Any) -> Event:
    """A new event with a fresh id, at ``now``."""
    return Event(secrets.token_hex(12), type_, round(now, 3), key, seq, data)


def call_key(call_id: str) -> str:
    return f"call:{call_id}"


def user_key(user: str) -> str:
    return f"user:{user}"

"""Calls: the rules a call follows, the relay path that applies them, where open calls are
kept, and the webhook that wakes an offline callee.

- :mod:`service.calls.rules`: call state, pure: ``Call``/``Party`` records and ``CallRules``
  deciding on a ``Ledger`` of open calls and returning what to send;
- :mod:`service.calls.store`: the ``CallStore`` interface and the in-memory store (the Redis
  one is :mod:`service.cluster.call_store`);
- :mod:`service.calls.coordinator`: ``Calls``, rules + store + delivery on the relay path (acks,
  holding what reaches nobody), joins, disconnects, the deadline sweep;
- :mod:`service.calls.webhook`: the signed ``call.incoming`` webhook;
- :mod:`service.calls.events`: lifecycle events (pure), recorded by the rules;
- :mod:`service.calls.lifecycle`: where they wait (the in-memory log) and how they are sent.
"""

from __future__ import annotations

from service.calls.coordinator import Calls
from service.calls.events import INCOMING, Event, user_key
from service.calls.events import OFFLINE as USER_OFFLINE
from service.calls.events import ONLINE as USER_ONLINE
from service.calls.events import event as new_event
from service.calls.lifecycle import (
    LEASE_SECONDS,
    EventLog,
    EventLogUnavailable,
    Lifecycle,
    LocalEventLog,
)
from service.calls.policy import CallPolicy
from service.calls.rules import (
    ACTIVE,
    ANSWERED_ELSEWHERE,
    BUSY,
    DECLINED_ELSEWHERE,
    ENDED,
    ENDED_BY_SERVER,
    MAX_HELD_MESSAGES,
    PEER_GONE,
    RINGING,
    TIMEOUT,
    Call,
    CallRules,
    Ledger,
)
from service.calls.store import (
    OUTBOX_MESSAGES,
    REPEAT_WAIT_SECONDS,
    SIGNAL_IDS_SECONDS,
    Ack,
    CallStore,
    CallStoreUnavailable,
    LocalCallStore,
    Recorded,
)
from service.calls.webhook import Webhook

__all__ = [
    "ACTIVE",
    "ANSWERED_ELSEWHERE",
    "BUSY",
    "DECLINED_ELSEWHERE",
    "ENDED",
    "ENDED_BY_SERVER",
    "INCOMING",
    "LEASE_SECONDS",
    "MAX_HELD_MESSAGES",
    "OUTBOX_MESSAGES",
    "PEER_GONE",
    "REPEAT_WAIT_SECONDS",
    "RINGING",
    "SIGNAL_IDS_SECONDS",
    "TIMEOUT",
    "USER_OFFLINE",
    "USER_ONLINE",
    "Ack",
    "Call",
    "CallPolicy",
    "CallRules",
    "CallStore",
    "CallStoreUnavailable",
    "Calls",
    "Event",
    "EventLog",
    "EventLogUnavailable",
    "Ledger",
    "Lifecycle",
    "LocalCallStore",
    "LocalEventLog",
    "Recorded",
    "Webhook",
    "new_event",
    "user_key",
]

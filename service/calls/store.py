"""Where open calls live: the :class:`CallStore` interface and the in-memory store.

Beside the calls: each message the service writes to a party's socket in a call gets a
sequence number, counted per call and party (:meth:`CallStore.next_seq`), and what was
written to a party's
socket is kept in its *outbox* (:meth:`CallStore.record`, the last :data:`OUTBOX_MESSAGES`),
so a device that claims the call after a half-dead socket gets again what that socket may
not have received (:meth:`CallStore.outbox`); the client drops the repeats by ``seq``.

A store runs a rule of :class:`~service.calls.CallRules` on a :class:`~service.calls.Ledger`
of the open calls of some users and writes back what the rule changed, as one atomic step:
two relays, a join and an expiry that touch the same call never interleave. The Redis store
(:mod:`service.cluster.call_store`) does the same for the whole cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

from service.calls.lifecycle import LocalEventLog
from service.calls.rules import Call, Ledger

T = TypeVar("T")
#: what a party's outbox keeps at most (the newest messages)
OUTBOX_MESSAGES: Final = 256
#: ended calls whose last sequence numbers are kept (their hangups come after the end)
ENDED_SEQS: Final = 4096
#: how long a signal's id is remembered (a client's retries and replays come sooner)
SIGNAL_IDS_SECONDS: Final = 600.0
#: signal ids remembered at most (the oldest are forgotten first)
SIGNAL_IDS: Final = 100_000
#: how long a repeat waits for the first to be answered
REPEAT_WAIT_SECONDS: Final = 5.0
Ack = dict[str, Any]
#: a message as it was sent: sequence number, event, body
Recorded = tuple[int, str, dict[str, Any]]


class CallStoreUnavailable(Exception):
    """The store cannot be reached: nothing was decided or changed."""


class CallStore(Protocol):
    async def update(self, users: Sequence[str], change: Callable[[Ledger], T]) -> T:
        """Run ``change`` on the open calls of ``users`` and store what it changed, as one
        atomic step; ``change``'s result. ``change`` may run more than once (a conflict
        with another node's change is retried), and raises before it changes anything."""

    async def due(self, now: float) -> list[tuple[str, tuple[str, str]]]:
        """Calls with a deadline at or before ``now``: (call id, its two users)."""

    async def next_seq(self, call_id: str, user: str) -> int:
        """The next sequence number of what ``user`` gets in call ``call_id``: 1, 2, 3 ..."""

    async def first_seq(self, call_id: str, user: str) -> int:
        """:meth:`next_seq` for an offer's recipient in call ``call_id``, which the offer is
        about to open: forgotten soon unless the call is stored."""

    async def reserve_seq(self, call_id: str, user: str) -> int | None:
        """:meth:`next_seq` if call ``call_id`` is open (or ended, a party still away), else
        None (nothing is counted for a call id nobody has)."""

    async def record(self, call_id: str, user: str, seq: int, event: str,
                     body: dict[str, Any], device: str) -> str | None:
        """``body`` (``seq``) is being written to ``user``'s ``device`` in call ``call_id``:
        keep it in the outbox (once: a ``seq`` not above the last one kept is not kept
        again). The party's device now when another one took the call over since the
        message was decided (a claim that read the outbox before this), else None."""

    async def outbox(self, call_id: str, user: str) -> list[Recorded]:
        """What was written to ``user``'s sockets in call ``call_id``, oldest first."""

    async def first_ack(self, sender: str, to: str, signal_id: str) -> Ack | None:
        """The ack of the signal ``signal_id`` from ``sender`` to ``to`` if it was handled
        before (within :data:`SIGNAL_IDS_SECONDS`), else None, and from now on the signal
        is being handled: a repeat meanwhile waits for its ack."""

    async def settle(self, sender: str, to: str, signal_id: str, ack: Ack | None) -> None:
        """The signal's ack (None: it was refused, a repeat is handled afresh)."""


class LocalCallStore:
    """One process's calls, in memory. A change runs without awaiting anything, so it is
    atomic on its own."""

    def __init__(self, events: LocalEventLog | None = None) -> None:
        #: where the lifecycle events of a change go as it is made (None: not sent)
        self.events = events
        self._calls: dict[str, Call] = {}
        self._by_user: dict[str, set[str]] = {}
        self._deadlines: dict[str, float] = {}
        #: (call id, user) -> the last sequence number handed out, for open calls ...
        self._seqs: dict[tuple[str, str], int] = {}
        #: ... and for the latest calls that ended (their last messages come after the end)
        self._ended_seqs: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._outboxes: dict[tuple[str, str], list[Recorded]] = {}
        #: (sender, to, signal id) -> (forgotten at, the ack, or a future while handled)
        self._acks: OrderedDict[tuple[str, str, str], tuple[float, Any]] = OrderedDict()

    async def update(self, users: Sequence[str], change: Callable[[Ledger], T]) -> T:
        by_user, calls = self._by_user, self._calls
        ledger = Ledger([calls[i] for user in users for i in by_user.get(user, ())])
        result = change(ledger)
        if ledger.events and self.events is not None:
            self.events.push(ledger.events)
        for call in ledger.ended.values():
            self._forget(call)
        for call in ledger.saved.values():
            self._calls[call.id] = call
            for user in call.users:
                self._by_user.setdefault(user, set()).add(call.id)
            deadline = call.deadline
            if deadline is None:
                self._deadlines.pop(call.id, None)
            else:
                self._deadlines[call.id] = deadline
        return result

    async def next_seq(self, call_id: str, user: str) -> int:
        key = (call_id, user)
        if call_id in self._calls:
            # (a call's first number may be counted before the call is stored: an offer's)
            last = self._seqs.get(key)
            if last is None:
                last = self._ended_seqs.pop(key, 0)
            seq = self._seqs[key] = last + 1
        else:
            seq = self._ended_seqs[key] = self._ended_seqs.get(key, 0) + 1
            self._ended_seqs.move_to_end(key)
            while len(self._ended_seqs) > ENDED_SEQS:
                self._ended_seqs.popitem(last=False)
        return seq

    async def first_seq(self, call_id: str, user: str) -> int:
        return await self.next_seq(call_id, user)  # (an LRU of ended calls' numbers keeps it)

    async def reserve_seq(self, call_id: str, user: str) -> int | None:
        return await self.next_seq(call_id, user) if call_id in self._calls else None

    async def record(self, call_id: str, user: str, seq: int, event: str,
                     body: dict[str, Any], device: str) -> str | None:
        call = self._calls.get(call_id)
        if call is None:
            return None  # over: nobody will claim it
        box = self._outboxes.setdefault((call_id, user), [])
        if not box or seq > box[-1][0]:
            box.append((seq, event, body))
            del box[:-OUTBOX_MESSAGES]
        now = call.side(user)[0].device
        return now if now is not None and now != device else None

    async def outbox(self, call_id: str, user: str) -> list[Recorded]:
        return list(self._outboxes.get((call_id, user), ()))

    async def first_ack(self, sender: str, to: str, signal_id: str) -> Ack | None:
        key, now = (sender, to, signal_id), time.monotonic()
        known = self._acks.get(key)
        if known is not None and known[0] > now:
            if isinstance(known[1], asyncio.Future):  # the first is still being handled
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(known[1]), REPEAT_WAIT_SECONDS)
                known = self._acks.get(key)
                if known is not None and not isinstance(known[1], asyncio.Future):
                    settled: Ack = known[1]
                    return settled
                return None  # refused, or never answered: handled afresh
            ack: Ack = known[1]
            return ack
        self._acks[key] = (now + SIGNAL_IDS_SECONDS, asyncio.get_running_loop().create_future())
        self._acks.move_to_end(key)
        while len(self._acks) > SIGNAL_IDS:
            self._acks.popitem(last=False)
        return None

    async def settle(self, sender: str, to: str, signal_id: str, ack: Ack | None) -> None:
        key = (sender, to, signal_id)
        known = self._acks.pop(key, None)
        if ack is not None:
            self._acks[key] = (time.monotonic() + SIGNAL_IDS_SECONDS, ack)
        if known is not None and isinstance(known[1], asyncio.Future) and not known[1].done():
            known[1].set_result(None)

    def _forget(self, call: Call) -> None:
        for user in call.users:
            if (last := self._seqs.pop((call.id, user), None)) is not None:
                self._ended_seqs[(call.id, user)] = last
            self._outboxes.pop((call.id, user), None)
        while len(self._ended_seqs) > ENDED_SEQS:
            self._ended_seqs.popitem(last=False)
        self._calls.pop(call.id, None)
        self._deadlines.pop(call.id, None)
        for user in call.users:
            ids = self._by_user.get(user)
            if ids is not None:
                ids.discard(call.id)
                if not ids:
                    del self._by_user[user]

    async def due(self, now: float) -> list[tuple[str, tuple[str, str]]]:
        return [(i, self._calls[i].users) for i, t in self._deadlines.items() if t <= now]

    def __len__(self) -> int:
        return len(self._calls)

"""Where open calls live: the :class:`CallStore` interface and the in-memory store.

A store runs a rule of :class:`~service.calls.CallRules` on a :class:`~service.calls.Ledger`
of the open calls of some users and writes back what the rule changed, as one atomic step:
two relays, a join and an expiry that touch the same call never interleave. The Redis store
(:mod:`service.cluster.call_store`) does the same for the whole cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from service.calls.rules import Call, Ledger

T = TypeVar("T")


class CallStoreUnavailable(Exception):
    """The store cannot be reached: nothing was decided or changed."""


class CallStore(Protocol):
    async def update(self, users: Sequence[str], change: Callable[[Ledger], T]) -> T:
        """Run ``change`` on the open calls of ``users`` and store what it changed, as one
        atomic step; ``change``'s result. ``change`` may run more than once (a conflict
        with another node's change is retried), and raises before it changes anything."""

    async def due(self, now: float) -> list[tuple[str, tuple[str, str]]]:
        """Calls with a deadline at or before ``now``: (call id, its two users)."""


class LocalCallStore:
    """One process's calls, in memory. A change runs without awaiting anything, so it is
    atomic on its own."""

    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}
        self._by_user: dict[str, set[str]] = {}
        self._deadlines: dict[str, float] = {}

    async def update(self, users: Sequence[str], change: Callable[[Ledger], T]) -> T:
        by_user, calls = self._by_user, self._calls
        ledger = Ledger([calls[i] for user in users for i in by_user.get(user, ())])
        result = change(ledger)
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

    def _forget(self, call: Call) -> None:
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

"""Call state: the rules of a call's life, pure (no I/O, no Socket.IO, no Redis).

A call is opened by an ``offer`` to a user who has no open call with the sender. Its two
parties are the caller (bound to the device, i.e. socket, that sent the offer) and the callee
(every device of the callee rings until one answers; that device is then bound). Signals
between the parties are routed to the other party's bound device; the callee's devices while
it rings. A party whose device dropped is *away*: what is sent to it is held, in order, until
one of its devices joins again within the grace period. While the call rings, everything the
caller sends is also kept in the *ring log*, replayed to each callee device that joins (an
offline callee, or one whose socket dropped before it answered).

Every decision is a method of :class:`CallRules` that reads and changes a :class:`Ledger` (the
open calls of the users involved, as one consistent read); the store that filled it writes
the changes back atomically (:mod:`service.calls.store`,
:mod:`service.cluster.call_store`). The method returns what to send (:class:`Send`); the caller
of the rules does the sending. A change a backend hears about (a call rings, is answered,
ends, is missed) is also recorded in the ledger as a lifecycle event
(:mod:`service.calls.events`), numbered in the call, and committed with the change.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from service.calls import events as ev
from service.calls.events import Event
from service.config import REJECT
from service.errors import Busy, Forbidden, Glare, NotInCall

RINGING: Final = "ringing"
ACTIVE: Final = "active"
#: hung up while the other party was away: kept only to hand that party its ``hangup`` (and
#: what was held before it) when one of its devices joins within the grace; open for nothing
ENDED: Final = "ended"
OFFER: Final = "offer"
ANSWER: Final = "answer"
CANDIDATE: Final = "candidate"
HANGUP: Final = "hangup"
#: why the service itself ends a call (``hangup`` it originates carries one)
TIMEOUT: Final = "timeout"
ANSWERED_ELSEWHERE: Final = "answered_elsewhere"
DECLINED_ELSEWHERE: Final = "declined_elsewhere"
PEER_GONE: Final = "peer_gone"
ENDED_BY_SERVER: Final = "ended_by_server"
BUSY: Final = "busy"
#: what is held for one party of one call at most (count, and bytes of JSON)
MAX_HELD_MESSAGES: Final = 100
MAX_HELD_BYTES: Final = 256 * 1024

#: a message as it is sent: event name and body
Message = tuple[str, dict[str, Any]]


def new_call_id() -> str:
    """An opaque, unguessable call id."""
    return secrets.token_urlsafe(12)


@dataclass(slots=True)
class Party:
    """One side of a call."""

    user: str
    #: the device (an address the delivery layer understands) the call is on; None: the
    #: callee while it rings (every device)
    device: str | None = None
    #: when set, the device dropped: signals are held until then (epoch seconds)
    away_until: float | None = None
    held: list[Message] = field(default_factory=list)
    held_bytes: int = 0

    def hold(self, message: Message, size: int) -> bool:
        """Keep ``message`` for later; False when this party's hold is full."""
        if (len(self.held) >= MAX_HELD_MESSAGES
                or self.held_bytes + size > MAX_HELD_BYTES):
            return False
        self.held.append(message)
        self.held_bytes += size
        return True

    def take_held(self) -> list[Message]:
        held, self.held, self.held_bytes = self.held, [], 0
        return held

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "device": self.device, "away_until": self.away_until,
                "held": [list(m) for m in self.held], "held_bytes": self.held_bytes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Party:
        return cls(data["user"], data["device"], data["away_until"],
                   [(m[0], m[1]) for m in data["held"]], data["held_bytes"])


@dataclass(slots=True)
class Call:
    """An open call."""

    id: str
    caller: Party
    callee: Party
    state: str
    opened_at: float
    #: when an unanswered call ends (epoch seconds); None once answered
    ring_until: float | None
    #: what the caller sent while ringing, replayed to each callee device that joins
    ring_log: list[Message] = field(default_factory=list)
    ring_log_bytes: int = 0
    #: when it was answered (epoch seconds)
    answered_at: float | None = None
    #: the callee was woken by the incoming-call webhook (a push): its end of ringing is
    #: told as ``call.cancelled`` too
    pushed: bool = False
    #: lifecycle events numbered so far in this call
    events: int = 0

    def side(self, user: str) -> tuple[Party, Party]:
        """(the party ``user`` is, the other one)."""
        return (self.caller, self.callee) if self.caller.user == user else (
            self.callee, self.caller)

    def has(self, user: str) -> bool:
        return user in (self.caller.user, self.callee.user)

    @property
    def users(self) -> tuple[str, str]:
        return self.caller.user, self.callee.user

    @property
    def deadline(self) -> float | None:
        """The earliest moment something must happen to this call on its own."""
        moments = [t for t in (self.ring_until, self.caller.away_until,
                               self.callee.away_until) if t is not None]
        return min(moments) if moments else None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "caller": self.caller.to_json(),
                "callee": self.callee.to_json(), "state": self.state,
                "opened_at": self.opened_at, "ring_until": self.ring_until,
                "ring_log": [list(m) for m in self.ring_log],
                "ring_log_bytes": self.ring_log_bytes, "answered_at": self.answered_at,
                "pushed": self.pushed, "events": self.events}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Call:
        return cls(data["id"], Party.from_json(data["caller"]),
                   Party.from_json(data["callee"]), data["state"], data["opened_at"],
                   data["ring_until"], [(m[0], m[1]) for m in data["ring_log"]],
                   data["ring_log_bytes"], data.get("answered_at"),
                   bool(data.get("pushed")), int(data.get("events") or 0))


class Ledger:
    """The open calls of some users as read in one go; records what a rule changes."""

    def __init__(self, calls: Iterable[Call] = ()) -> None:
        self.calls: dict[str, Call] = {c.id: c for c in calls}
        self.saved: dict[str, Call] = {}
        self.ended: dict[str, Call] = {}
        #: lifecycle events of what changed, in order (committed with the change)
        self.events: list[Event] = []

    def between(self, a: str, b: str) -> Call | None:
        """The open call between ``a`` and ``b``."""
        for call in self.calls.values():
            caller, callee = call.caller.user, call.callee.user
            if call.state != ENDED and (
                    (caller == a and callee == b) or (caller == b and callee == a)):
                return call
        return None

    def of(self, user: str, *, ended: bool = False) -> list[Call]:
        """The open calls of ``user``, oldest first (``ended``: and the ended calls that
        still hold what an away party of them has to hear)."""
        return sorted((c for c in self.calls.values()
                       if c.has(user) and (ended or c.state != ENDED)),
                      key=lambda c: c.opened_at)

    def save(self, call: Call) -> None:
        self.calls[call.id] = call
        self.saved[call.id] = call

    def end(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        self.saved.pop(call.id, None)
        self.ended[call.id] = call

    @property
    def changed(self) -> bool:
        return bool(self.saved or self.ended)


class PermissionNeeded(Exception):
    """An offer would open a call that the app's backend has not allowed yet (nothing was
    changed): ask it, then decide again."""


@dataclass(slots=True)
class Send:
    """A message to deliver: to ``device`` of ``user``, or (``device`` None) to every joined
    device of ``user`` except ``skip``. ``hold_in``: when it reaches nobody, hold it for
    ``user`` in that call (:meth:`CallRules.hold`)."""

    event: str
    body: dict[str, Any]
    user: str
    device: str | None = None
    skip: str | None = None
    hold_in: str | None = None


@dataclass(slots=True)
class Outcome:
    """What a rule decided: the call it was about, what to send (in order), and how the
    relay itself went so far."""

    call: Call | None = None
    sends: list[Send] = field(default_factory=list)
    #: the relayed message itself: ``sends[relayed]``, when it is sent at all
    relayed: int | None = None
    #: the relayed message was held (the other party is away) or logged for ringing devices
    held: bool = False
    #: this relay opened the call
    opened: bool = False
    #: the call changed (and must be stored again)
    changed: bool = False
    #: the device a claim took the call from (to be closed)
    replaced: str | None = None


class CallRules:
    """The rules, with the deployment's settings (see the module docstring)."""

    def __init__(self, *, ring_timeout: float, grace: float, busy_policy: str) -> None:
        self.ring_timeout = ring_timeout
        self.grace = grace
        self.busy_policy = busy_policy

    def relay(self, ledger: Ledger, event: str, sender: str, device: str, to: str,
              call_id: str | None, body: Mapping[str, Any], size: int, now: float, *,
              seq: int | None = None, fresh: tuple[str, int] | None = None,
              may_open: bool = True, alive: bool = True) -> Outcome:
        """``offer``/``answer``/``candidate``/``hangup`` from ``device`` of ``sender`` to
        ``to`` (``body``: what the client sent, ``size``: its JSON length). ``seq``: the
        number reserved for this message to ``to`` in call ``call_id``; ``fresh``: the id of
        the call an offer opens, and the offer's number in it. A message given its number
        here keeps it wherever it goes (a ring log, a hold): a device that gets it again
        can tell. Without ``may_open``, an offer that would open a call raises
        :class:`PermissionNeeded` (the app's backend is to be asked first). ``alive``:
        whether the sending socket is still open (a message handled after its socket
        closed never binds the party back to it)."""
        if to == sender:
            raise Forbidden("a call needs two users: you cannot call yourself")
        call = ledger.between(sender, to)
        if call is not None and call_id is not None and call_id != call.id:
            raise NotInCall()
        if call is None:
            if event != OFFER or call_id is not None:
                raise NotInCall()
            if not may_open:
                raise PermissionNeeded()
            return self._open(ledger, sender, device, to, body, size, now, fresh)
        if event == OFFER and call.state == RINGING and call.callee.user == sender:
            raise Glare(call.id)
        outcome = Outcome(call=call)
        me, peer = call.side(sender)
        self._claim(ledger, outcome, call, me, device, event, now, alive)
        message: Message = (event, {**body, "from": sender, "callId": call.id})
        if seq is not None and call_id is not None:
            message[1]["seq"] = seq
        if event == HANGUP:
            outcome.changed = True
            if call.state == RINGING:
                self._over(ledger, call, "cancelled" if me is call.caller else "declined",
                           sender, now)
            else:
                self._over(ledger, call, HANGUP, sender, now)
            if peer.away_until is not None:  # the last thing it needs to hear: held
                self._end_for_away(ledger, call, peer, message, size)
                outcome.held = True
                return outcome
            ledger.end(call)
            self._send(outcome, call, peer, message, size, hold=False)
            if outcome.relayed is not None and peer.device is not None:
                outcome.sends[outcome.relayed].hold_in = call.id  # should its socket be closing
            return outcome
        self._send(outcome, call, peer, message, size, hold=True)
        if outcome.changed:
            ledger.save(call)
        return outcome

    def _open(self, ledger: Ledger, sender: str, device: str, to: str,
              body: Mapping[str, Any], size: int, now: float,
              fresh: tuple[str, int] | None) -> Outcome:
        if self.busy_policy == REJECT and ledger.of(to):
            raise Busy()
        call_id, seq = fresh or (new_call_id(), None)
        call = Call(call_id, Party(sender, device), Party(to), RINGING, now,
                    now + self.ring_timeout)
        outcome = Outcome(call=call, opened=True)
        offer = {**body, "from": sender, "callId": call.id}
        if seq is not None:
            offer["seq"] = seq
        self._send(outcome, call, call.callee, (OFFER, offer), size, hold=True)
        ledger.save(call)
        self._emit(ledger, call, ev.RINGING, now)
        return outcome

    def _claim(self, ledger: Ledger, outcome: Outcome, call: Call, me: Party, device: str,
               event: str, now: float, alive: bool = True) -> None:
        """Check that ``device`` speaks for ``me`` in ``call``, and what that changes."""
        if me is call.callee and call.state == RINGING:
            outcome.changed = True
            if event == ANSWER:  # the first device to answer wins
                me.device = device
                call.state, call.ring_until, call.answered_at = ACTIVE, None, now
                call.ring_log, call.ring_log_bytes = [], 0
                self._emit(ledger, call, ev.ANSWERED, now,
                           ringSeconds=round(now - call.opened_at, 3))
                if call.pushed:
                    self._emit(ledger, call, ev.CANCELLED, now, reason="answered")
                outcome.sends.append(self._service_hangup(call, me.user, ANSWERED_ELSEWHERE,
                                                          skip=device))
            elif event == HANGUP:  # declined on this device: the others stop ringing
                outcome.sends.append(self._service_hangup(call, me.user, DECLINED_ELSEWHERE,
                                                          skip=device))
            else:
                raise NotInCall()  # candidates come after the answer
            return
        if event == ANSWER and call.state == RINGING:
            raise NotInCall()  # only the callee answers
        if me.device == device:
            if me.away_until is not None and alive:
                # found away (a delivery to it failed: its node briefly unreachable), yet it
                # speaks: it is back, and gets what was held meanwhile (not a socket that has
                # closed since it sent this: the party stays away, what is held stays held)
                self._bind(outcome, me, device)
            return
        if me.away_until is None:
            raise NotInCall()  # the call is on another device
        if alive:
            self._bind(outcome, me, device)

    def _bind(self, outcome: Outcome, party: Party, device: str) -> None:
        """``party``'s device came back as ``device``: what was held for it goes first."""
        party.device, party.away_until = device, None
        outcome.changed = True
        for event, body in party.take_held():
            outcome.sends.append(Send(event, body, party.user, device))

    def _send(self, outcome: Outcome, call: Call, peer: Party, message: Message, size: int,
              *, hold: bool) -> None:
        event, body = message
        if peer.device is None:  # the callee's devices ring
            if hold and call.state == RINGING and (
                    len(call.ring_log) < MAX_HELD_MESSAGES
                    and call.ring_log_bytes + size <= MAX_HELD_BYTES):
                call.ring_log.append(message)
                call.ring_log_bytes += size
                outcome.held = outcome.changed = True
            outcome.relayed = len(outcome.sends)
            outcome.sends.append(Send(event, body, peer.user))
        elif peer.away_until is not None:
            outcome.held = hold and peer.hold(message, size)
            outcome.changed = outcome.changed or outcome.held
        else:
            outcome.relayed = len(outcome.sends)
            outcome.sends.append(Send(event, body, peer.user, peer.device,
                                      hold_in=call.id if hold else None))

    def _end_for_away(self, ledger: Ledger, call: Call, party: Party, hangup: Message,
                      size: int) -> None:
        """``call`` is over, but ``party`` is away: it keeps what was held for it and the
        ``hangup`` (always: whatever the hold's bounds, it is the last message) until one of
        its devices joins, or its grace ends."""
        party.held.append(hangup)
        party.held_bytes += size
        call.state, call.ring_until = ENDED, None
        call.ring_log, call.ring_log_bytes = [], 0
        other = call.callee if party is call.caller else call.caller
        other.away_until, other.held, other.held_bytes = None, [], 0
        ledger.save(call)

    def hold(self, ledger: Ledger, call_id: str, user: str, device: str, message: Message,
             size: int, now: float) -> Outcome:
        """``message`` for ``device`` of ``user`` in call ``call_id`` reached nobody: the
        device is gone. Hold it (the party is away from now on, if it was not yet), or send
        it to the device the party has come back on meanwhile. The ``hangup`` that ended the
        call is kept for the party in an :data:`ENDED` call of its own."""
        call = ledger.calls.get(call_id)
        outcome = Outcome(call=call)
        if call is None and message[0] == HANGUP:
            sender = message[1].get("from")
            if not isinstance(sender, str) or sender == user:
                return outcome
            party = Party(user, device, now + self.grace)
            call = Call(call_id, Party(sender), party, ENDED, now, None)
            self._end_for_away(ledger, call, party, message, size)
            outcome.call, outcome.held = call, True
            return outcome
        if call is None:
            return outcome
        party, _ = call.side(user)
        if party.device != device and party.device is not None and party.away_until is None:
            outcome.relayed = 0
            outcome.sends.append(Send(message[0], message[1], user, party.device,
                                      hold_in=call.id))
            return outcome
        if party.away_until is None:
            party.away_until = now + self.grace
        if call.state == ENDED and party.held and party.held[-1][0] == HANGUP:
            # a signal sent before the hangup that reached the party's node after it: it
            # goes before the hangup, which stays the last thing the party hears
            hangup = party.held.pop()
            outcome.held = party.hold(message, size)
            party.held.append(hangup)
        else:
            outcome.held = party.hold(message, size)
        ledger.save(call)
        return outcome

    def gone(self, ledger: Ledger, user: str, device: str, now: float) -> None:
        """``device`` of ``user`` disconnected: the calls it carried hold their signals."""
        for call in ledger.of(user):
            party, _ = call.side(user)
            if party.device == device and party.away_until is None:
                party.away_until = now + self.grace
                ledger.save(call)

    def joined(self, ledger: Ledger, user: str, device: str) -> list[Send]:
        """``device`` of ``user`` joined its room: it takes the calls whose party was away
        (and what was held for them), and rings with the calls ringing for ``user``."""
        sends: list[Send] = []
        for call in ledger.of(user, ended=True):
            party, _ = call.side(user)
            if party is call.callee and call.state == RINGING:
                sends.extend(Send(event, body, user, device) for event, body in call.ring_log)
            elif party.away_until is not None:
                outcome = Outcome()
                self._bind(outcome, party, device)
                sends.extend(outcome.sends)
                if call.state == ENDED:  # it has heard its hangup: the call is gone
                    ledger.end(call)
                else:
                    ledger.save(call)
        return sends

    def claim(self, ledger: Ledger, call_id: str, user: str, device: str) -> Outcome:
        """``device`` of ``user`` claims call ``call_id`` (the app reconnected, its earlier
        socket may be half-dead): it becomes the party's device at once, without waiting for
        the earlier one to be found gone, and gets what was held for the party. A callee
        whose call rings gets the ring log, as a device that joins does."""
        call = ledger.calls.get(call_id)
        if call is None or not call.has(user):
            raise NotInCall()
        outcome = Outcome(call=call)
        party, _ = call.side(user)
        if call.state == ENDED and party.away_until is None:
            raise NotInCall()  # the party that hung up: the call is over for it
        if party is call.callee and call.state == RINGING:
            outcome.sends.extend(Send(event, body, user, device)
                                 for event, body in call.ring_log)
            return outcome
        if party.device != device or party.away_until is not None:
            if party.device != device:
                outcome.replaced = party.device
            self._bind(outcome, party, device)
            if call.state == ENDED:  # it has heard its hangup: the call is gone
                ledger.end(call)
            else:
                ledger.save(call)
        return outcome

    def expire(self, ledger: Ledger, call_id: str, now: float) -> list[Send]:
        """End call ``call_id`` if its ring timeout or a party's grace has passed: both
        parties are told why (``hangup`` with a reason)."""
        call = ledger.calls.get(call_id)
        if call is None:
            return []
        if call.ring_until is not None and call.ring_until <= now:
            self._over(ledger, call, TIMEOUT, None, now)
            ledger.end(call)
            return [self._service_hangup(call, call.caller.user, TIMEOUT),
                    self._service_hangup(call, call.callee.user, TIMEOUT)]
        for party, other in ((call.caller, call.callee), (call.callee, call.caller)):
            if party.away_until is not None and party.away_until <= now:
                ledger.end(call)
                if call.state == ENDED:  # the other hung up: it knows
                    return []
                self._over(ledger, call, PEER_GONE, party.user, now)
                return [self._service_hangup(call, other.user, PEER_GONE)]
        return []

    def end_by_server(self, ledger: Ledger, call_id: str, user: str, now: float
                      ) -> list[Send] | None:
        """End ``user``'s call ``call_id`` for the app's backend (the server API): both
        parties get ``hangup {reason: "ended_by_server"}``; a party that is away gets it
        held, like any hangup. None when ``user`` has no such open call."""
        call = ledger.calls.get(call_id)
        if call is None or not call.has(user) or call.state == ENDED:
            return None
        self._over(ledger, call, ENDED_BY_SERVER, None, now)
        sends, away = [], None
        for party, other in ((call.caller, call.callee), (call.callee, call.caller)):
            if party.device is not None and party.away_until is not None and away is None:
                away = party, other
            else:
                sends.append(self._service_hangup(call, party.user, ENDED_BY_SERVER))
        if away is None:
            ledger.end(call)
        else:
            party, other = away
            body = {"from": other.user, "callId": call.id, "reason": ENDED_BY_SERVER}
            self._end_for_away(ledger, call, party, (HANGUP, body), len(str(body)))
        return sends

    def pushed(self, ledger: Ledger, call_id: str) -> bool:
        """The callee of call ``call_id`` is woken by the incoming-call webhook: the end of
        its ringing is told as ``call.cancelled`` too (a backend cancels its push). Whether
        the call still rings."""
        call = ledger.calls.get(call_id)
        if call is None or call.state != RINGING:
            return False
        if not call.pushed:
            call.pushed = True
            ledger.save(call)
        return True

    @staticmethod
    def _emit(ledger: Ledger, call: Call, type_: str, now: float, **data: Any) -> None:
        """Record lifecycle event ``type_`` of ``call``, the next in the call's order."""
        call.events += 1
        ledger.events.append(ev.event(type_, ev.call_key(call.id), call.events, now,
                                      callId=call.id, caller=call.caller.user,
                                      callee=call.callee.user, **data))

    def _over(self, ledger: Ledger, call: Call, reason: str, by: str | None,
              now: float) -> None:
        """``call`` ends (``by`` a party, or the service: None) for ``reason``: missed
        before an answer (and cancelled for a pushed callee), ended after one."""
        if call.state == RINGING:
            self._emit(ledger, call, ev.MISSED, now, reason=reason, by=by)
            if call.pushed:
                self._emit(ledger, call, ev.CANCELLED, now, reason=reason)
        elif call.state == ACTIVE:
            answered = call.answered_at if call.answered_at is not None else now
            self._emit(ledger, call, ev.ENDED, now, reason=reason, by=by,
                       duration=round(max(0.0, now - answered), 3))

    @staticmethod
    def _service_hangup(call: Call, to: str, reason: str, *, skip: str | None = None
                        ) -> Send:
        """A ``hangup`` the service originates, to ``to``'s device in the call (every
        device while it rings, but ``skip``)."""
        party, other = call.side(to)
        body = {"from": other.user, "callId": call.id, "reason": reason}
        if party.device is not None and party.away_until is None and skip is None:
            return Send(HANGUP, body, to, party.device)
        return Send(HANGUP, body, to, skip=skip)

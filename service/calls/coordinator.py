"""Calls on the relay path: the rules (:mod:`service.calls.rules`) decide, the store
(:mod:`service.calls.store`) keeps the decision, this module delivers what was decided and
answers the sender. Also the per-node sweep that ends calls past their ring timeout or grace.

Every message written to a party in a call carries ``seq``, that party's sequence number in
the call, stamped when it is first written (a held message when it is flushed); what goes to
the call's device is kept in the party's outbox before it is sent, so a device that claims
the call (``ClaimCall``) gets again what the earlier socket may have lost, in order, and the
client drops what it already had by ``seq``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Final

import orjson

from service.calls.lifecycle import Lifecycle
from service.calls.policy import CallPolicy
from service.calls.rules import (
    BUSY,
    ENDED_BY_SERVER,
    HANGUP,
    OFFER,
    RINGING,
    Call,
    CallRules,
    Ledger,
    Outcome,
    PermissionNeeded,
    Send,
    new_call_id,
)
from service.calls.store import CallStore, CallStoreUnavailable
from service.calls.webhook import Webhook
from service.delivery import Delivery, DeliveryUnavailable, PresenceUnavailable, user_room
from service.errors import Busy, Forbidden, Unavailable
from service.protocol import Claim, Relay
from service.telemetry import Metrics, log_event

#: how often a node looks for calls past their deadline
SWEEP_SECONDS: Final = 0.25
Ack = dict[str, Any]


class Calls:
    """Call state for one node's sockets (see the module docstring)."""

    def __init__(self, rules: CallRules, store: CallStore, delivery: Delivery,
                 logger: logging.Logger, webhook: Webhook | None = None,
                 metrics: Metrics | None = None, policy: CallPolicy | None = None,
                 policy_fail_open: bool = False, lifecycle: Lifecycle | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.rules = rules
        self.store = store
        self.delivery = delivery
        self.webhook = webhook
        self.log = logger
        #: asked before an offer opens a call (the app's backend), if there is one
        self.policy = policy
        self.policy_fail_open = policy_fail_open
        #: the lifecycle webhooks (events of calls and users), if the deployment wants them
        self.lifecycle = lifecycle

    async def relay(self, event: str, sid: str, sender: str, relay: Relay) -> Ack:
        """Relay ``relay`` from ``sid`` (of ``sender``) within its call; the ack. A signal
        with a ``signalId`` the sender already sent to ``relay.to`` (a retry, a replay of an
        offline buffer) is answered with the first one's ack and not relayed again."""
        if relay.signal_id is None:
            return await self._relay(event, sid, sender, relay)
        try:
            first = await self.store.first_ack(sender, relay.to, relay.signal_id)
        except CallStoreUnavailable:
            raise Unavailable("the call store cannot be reached; nothing was sent") from None
        if first is not None:
            self.metrics.repeats.inc()
            return first
        ack: Ack | None = None
        try:
            ack = await self._relay(event, sid, sender, relay)
            return ack
        finally:  # a refusal is not remembered: a repeat is handled afresh
            with contextlib.suppress(CallStoreUnavailable):
                await self.store.settle(sender, relay.to, relay.signal_id, ack)

    async def _relay(self, event: str, sid: str, sender: str, relay: Relay) -> Ack:
        device = self.delivery.device(sid)
        now = time.time()
        body = relay.body  # parse_relay's own dict: the rules copy it into what they send
        # the message's number for its recipient is counted before the rules run, so the
        # ring log and a hold keep it: a device given it again (a join, a claim) can tell
        seq: int | None = None
        fresh: tuple[str, int] | None = None
        try:
            if relay.call_id is not None:
                seq = await self.store.reserve_seq(relay.call_id, relay.to)
            elif event == OFFER:
                fresh_id = new_call_id()
                fresh = (fresh_id, await self.store.first_seq(fresh_id, relay.to))
        except CallStoreUnavailable:
            raise Unavailable("the call store cannot be reached; nothing was sent") from None

        # with a call permission hook, an offer opens a call only once the backend allowed
        # it: decided in the same step as the opening (a call that ends meanwhile is no way
        # around the hook)
        may_open = self.policy is None

        # a message read before its socket closed may be handled after the close: its
        # device must not take the call back (what was held would go to a dead socket)
        alive = self.delivery.is_open(sid)

        def decide(ledger: Ledger) -> Outcome:
            return self.rules.relay(ledger, event, sender, device, relay.to, relay.call_id,
                                    body, relay.size, now, seq=seq, fresh=fresh,
                                    may_open=may_open, alive=alive)

        try:
            try:
                outcome = await self._update((sender, relay.to), decide)
            except PermissionNeeded:
                await self._permitted(sender, relay.to)
                may_open = True
                outcome = await self._update((sender, relay.to), decide)
        except Busy:
            # for clients that ignore acks too: the attempt ends like a call the callee
            # hung up with "busy"
            # (a call of its own, whose one message it is: seq 1)
            await self._deliver(Send(HANGUP, {"from": relay.to, "callId": new_call_id(),
                                              "reason": BUSY, "seq": 1}, sender, device),
                                record=False)
            raise
        delivered, held = await self._carry_out(outcome, relay.size)
        call = outcome.call
        assert call is not None
        if held and not delivered:  # (ids and numbers only: never a signal's body)
            log_event(self.log, "signal_held", logging.DEBUG, call=call.id, to=relay.to,
                      seq=seq, kind=event)
        ack: Ack = {"ok": True, "delivered": delivered}
        if event == OFFER:
            ack["callId"] = call.id
        if outcome.opened:
            log_event(self.log, "call_opened", call=call.id, caller=sender, callee=relay.to,
                      delivered=delivered)
            self.metrics.calls_opened.inc()
            if not delivered and self.webhook is not None and await self._pushing(call.id,
                                                                                  relay.to):
                self.webhook.incoming(call.id, sender, relay.to, self.rules.ring_timeout,
                                      ringing=lambda: self.ringing(call.id, relay.to))
                ack["notified"] = True
        elif not delivered and held:
            ack["held"] = True
        if event == HANGUP:
            log_event(self.log, "call_ended", call=call.id, reason="hangup", by=sender)
            self.metrics.calls_ended.labels("hangup").inc()
        return ack

    async def _carry_out(self, outcome: Outcome, size: int) -> tuple[bool, bool]:
        """Send what ``outcome`` says, holding what reaches nobody; (whether the relayed
        message was delivered, whether it was held)."""
        delivered, held = False, outcome.held
        # the relay changed the call (opened it, answered it, ended it): that is stored, and
        # a delivery the cluster could not carry is told as not delivered, not unavailable
        committed = outcome.changed or outcome.opened
        for index, send in enumerate(outcome.sends):
            try:
                send = await self._stamp(send)
                got = await self._deliver(send, strict=index == outcome.relayed)
            except Unavailable:
                if not committed:
                    raise  # nothing changed: retry
                if index == outcome.relayed:
                    held = False  # (a ring log replays to devices that join, not to these)
                continue  # not held either: the party's socket is there, the cluster is not
            if not got and send.hold_in is not None and send.device is not None:
                try:
                    got, held = await self._hold(send, size)
                except Unavailable:
                    if not committed:
                        raise
                    got, held = False, False  # the change stands: told as not delivered
            if index == outcome.relayed:
                delivered = got
        return delivered, held

    async def _hold(self, send: Send, size: int) -> tuple[bool, bool]:
        """``send`` reached nobody: hold it, or send it where its party is now."""
        assert send.hold_in is not None and send.device is not None
        call_id, device, now = send.hold_in, send.device, time.time()

        def hold(ledger: Ledger) -> Outcome:
            return self.rules.hold(ledger, call_id, send.user, device,
                                   (send.event, send.body), size, now)

        outcome = await self._update((send.user,), hold)
        if outcome.sends:  # the party is on another device now
            got = await self._deliver(outcome.sends[0])
            log_event(self.log, "signal_redirected", logging.DEBUG, call=call_id,
                      to=send.user, seq=send.body.get("seq"), delivered=got)
            return got, False
        log_event(self.log, "signal_hold", logging.DEBUG, call=call_id, to=send.user,
                  seq=send.body.get("seq"), held=outcome.held, device=device)
        return False, outcome.held

    async def undelivered(self, user: str, device: str, event: str,
                          body: dict[str, Any]) -> None:
        """A call signal reached the node of ``device`` after its socket closed there:
        hold it (or send it where the party is now), as :meth:`relay` would have."""
        call_id = body.get("callId")
        if not isinstance(call_id, str):
            return
        try:
            await self._hold(Send(event, body, user, device, hold_in=call_id),
                             len(orjson.dumps(body)))
        except Unavailable:
            log_event(self.log, "call_state_unavailable", logging.WARNING, during="hold")

    async def _pushing(self, call_id: str, callee: str) -> bool:
        """The callee of call ``call_id`` is about to be woken (call.incoming): noted first,
        so the end of its ringing is told as call.cancelled too. False when the call rings
        no more (answered or ended meanwhile: nothing to wake it for)."""
        try:
            ringing: bool = await self._update((callee,), lambda ledger: self.rules.pushed(
                ledger, call_id))
        except Unavailable:  # woken anyway: that matters more than the cancel event
            if self.lifecycle is not None:
                self.metrics.webhook_events.labels("call.cancelled", "lost").inc()
                log_event(self.log, "webhook_event_lost", logging.WARNING,
                          type="call.cancelled", call=call_id, why="call_store_unavailable")
            return True
        return ringing

    async def ringing(self, call_id: str, callee: str) -> bool:
        """Whether call ``call_id`` still rings (one read; when the store cannot be read:
        perhaps, so a webhook keeps trying)."""
        def rings(ledger: Ledger) -> bool:
            call = ledger.calls.get(call_id)
            return call is not None and call.state == RINGING

        try:
            result: bool = await self.store.update((callee,), rings)
        except CallStoreUnavailable:
            return True
        return result

    async def joined(self, user: str, sid: str) -> None:
        """``sid`` joined ``user``'s room: it gets what was held or is ringing for it."""
        device = self.delivery.device(sid)
        async with self.delivery.gated(device):  # what was held goes before anything newer
            sends = await self._update((user,), lambda ledger: self.rules.joined(
                ledger, user, device))
            await self._deliver_all(sends)
            if sends:
                log_event(self.log, "joined_sent", logging.DEBUG, user=user,
                          seqs=[s.body.get("seq") for s in sends])
        if self.lifecycle is not None:
            await self.lifecycle.joined(user)

    async def claim(self, sid: str, user: str, claim: Claim) -> Ack:
        """``ClaimCall``: ``sid`` of ``user`` takes call ``claim.call_id`` over now (the
        earlier device is closed): it gets again, in order, what was written to the party's
        device after ``claim.last_seq`` (all the outbox keeps, without one), then what was
        held for the party."""
        device = self.delivery.device(sid)
        async with self.delivery.gated(device):  # nothing newer overtakes what goes again
            outcome = await self._update((user,), lambda ledger: self.rules.claim(
                ledger, claim.call_id, user, device))
            try:
                written = await self.store.outbox(claim.call_id, user)
            except CallStoreUnavailable:
                raise Unavailable("the call store cannot be reached") from None
            replayed = 0
            for seq, event, body in written:
                if claim.last_seq is None or seq > claim.last_seq:
                    replayed += await self._deliver(Send(event, body, user, device),
                                                    record=False)
            await self._deliver_all(outcome.sends)
            log_event(self.log, "claim_sent", logging.DEBUG, call=claim.call_id, user=user,
                      last_seq=claim.last_seq,
                      outbox=[seq for seq, _, _ in written],
                      held=[s.body.get("seq") for s in outcome.sends])
        if outcome.replaced is not None:
            with contextlib.suppress(DeliveryUnavailable, PresenceUnavailable):
                await self.delivery.close(outcome.replaced)
        log_event(self.log, "call_claimed", call=claim.call_id, user=user,
                  replaced=outcome.replaced is not None, replayed=replayed)
        return {"ok": True, "replayed": replayed}

    async def gone(self, user: str, sid: str) -> None:
        """``sid`` of ``user`` disconnected: its calls hold their signals from now on."""
        device, now = self.delivery.device(sid), time.time()
        if self.lifecycle is not None:
            await self.lifecycle.left(user)
        await self._update((user,), lambda ledger: self.rules.gone(ledger, user, device, now))

    async def sweep(self) -> float:
        """End the calls past their ring timeout or grace (one step of a supervised loop;
        every node runs it, the store lets one of them end each call)."""
        now = time.time()
        try:
            due = await self.store.due(now)
        except CallStoreUnavailable:  # Redis is away (presence says so, once): try later
            return SWEEP_SECONDS * 4
        for call_id, users in due:
            def expire(ledger: Ledger, call_id: str = call_id) -> list[Send]:
                return self.rules.expire(ledger, call_id, now)

            try:
                # (the rule may run more than once, and on every node: what it returns is
                # what this node's committed change decided, so the call ends here once)
                sends = await self.store.update(users, expire)
            except CallStoreUnavailable:
                return SWEEP_SECONDS * 4
            if sends:
                reason = sends[0].body["reason"]
                log_event(self.log, "call_ended", call=call_id, reason=reason)
                self.metrics.calls_ended.labels(reason).inc()
            await self._deliver_all(sends)
        return SWEEP_SECONDS

    async def _permitted(self, caller: str, callee: str) -> None:
        """An offer would open a call between them: may ``caller`` ring ``callee``? (An
        offer in an open call is a renegotiation: never asked.) Raises :class:`Forbidden`
        when the backend says no, :class:`Unavailable` when it gave no answer (unless the
        hook fails open)."""
        assert self.policy is not None
        allowed = await self.policy.allows(caller, callee)
        if allowed is False:
            raise Forbidden("this call is not allowed")
        if allowed is None and not self.policy_fail_open:
            raise Unavailable("the call could not be checked; try again")

    async def open_calls(self, user: str) -> list[Call]:
        """``user``'s open calls (ringing or answered). Raises :class:`Unavailable`."""
        calls: list[Call] = await self._update((user,), lambda ledger: ledger.of(user))
        return calls

    async def end_by_server(self, user: str, call_id: str) -> bool:
        """End ``user``'s call ``call_id`` for the app's backend; whether there was one.
        Raises :class:`Unavailable`."""
        now = time.time()
        sends = await self._update((user,), lambda ledger: self.rules.end_by_server(
            ledger, call_id, user, now))
        if sends is None:
            return False
        log_event(self.log, "call_ended", call=call_id, reason=ENDED_BY_SERVER, by="server")
        self.metrics.calls_ended.labels(ENDED_BY_SERVER).inc()
        await self._deliver_all(sends)
        return True

    async def _update(self, users: tuple[str, ...], change: Any) -> Any:
        try:
            return await self.store.update(users, change)
        except CallStoreUnavailable:
            raise Unavailable("the call store cannot be reached; nothing was sent") from None

    async def _deliver_all(self, sends: list[Send]) -> None:
        """Send each, numbered; one the store cannot number (Redis away) is skipped."""
        for send in sends:
            with contextlib.suppress(Unavailable):
                await self._deliver(await self._stamp(send))

    async def _stamp(self, send: Send) -> Send:
        """``send`` with its party's next ``seq`` in the call (unless it has one: a held
        message written again keeps its number). Raises :class:`Unavailable`."""
        call_id = send.body.get("callId")
        if not isinstance(call_id, str) or "seq" in send.body:
            return send
        try:
            seq = await self.store.next_seq(call_id, send.user)
        except CallStoreUnavailable:
            raise Unavailable("the call store cannot be reached; nothing was sent") from None
        return Send(send.event, {**send.body, "seq": seq}, send.user, send.device, send.skip,
                    send.hold_in)

    async def _deliver(self, send: Send, *, strict: bool = False, record: bool = True) -> bool:
        """Send one message; whether a device got it. What goes to the call's device is kept
        in its party's outbox first (``record``). When the cluster cannot be reached:
        False, or (``strict``: the sender's own message) :class:`Unavailable`."""
        try:
            if send.device is not None:
                device = send.device
                seq, call_id = send.body.get("seq"), send.body.get("callId")
                if record and isinstance(seq, int) and isinstance(call_id, str):
                    # (a claim since this was decided: it goes to the claiming device,
                    # behind what the claim sends again)
                    device = await self.store.record(call_id, send.user, seq, send.event,
                                                     send.body, device) or device
                return await self.delivery.to_device(send.event, send.body, send.user,
                                                     device)
            skip = self.delivery.sid_of(send.skip) if send.skip is not None else ""
            return await self.delivery.relay(send.event, send.body, send.user,
                                             user_room(send.user), skip)
        except (PresenceUnavailable, DeliveryUnavailable, CallStoreUnavailable):
            if strict:
                raise Unavailable("the cluster cannot be reached; nothing was sent") from None
            return False

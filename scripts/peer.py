#!/usr/bin/env python3
"""A command-line peer for trying the service: one waits for calls, another calls it.

    scripts/peer.py --token "$BOB" wait          # joins bob's room, answers the first offer
    scripts/peer.py --token "$ALICE" call bob    # offers, waits for the answer, hangs up

    scripts/peer.py --token "$BOB" wait --decline     # declines the first call
    scripts/peer.py --token "$BOB" wait --drop 3      # loses its connection for 3 s after
                                                      # the offer, comes back, then answers

It signals exactly as an app would (JoinSocket, offer, answer, candidate, hangup, all with the
call's callId) with a placeholder SDP: no media flows, but every message crosses the service
and is printed, with what the service says about the call: busy, glare, ringing an offline
callee (held, maybe notified by webhook), answered or declined on another device, held while
reconnecting, no answer (timeout), the other side gone.

It does what the protocol asks of a client after a reconnect: on every connect it claims its
call, if it is in one (``ClaimCall`` with the last ``seq`` it handled), then joins its room,
and it drops a message whose ``seq`` it has handled already (a claim may send again what the
old socket did get).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from collections.abc import Sequence
from typing import Any

import socketio
from engineio.payload import Payload

# python-engineio's client otherwise drops a long-poll response of more than 16 packets
Payload.max_decode_packets = 1_000_000
SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=peer.py\r\nt=0 0\r\n"
CANDIDATE = {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}
#: why the service ended a call, in words
ENDED = {"timeout": "no answer", "answered_elsewhere": "answered on another device",
         "declined_elsewhere": "declined on another device", "peer_gone": "the other side is gone",
         "busy": "busy"}


def token_user(token: str) -> str:
    """The ``sub`` of a JWT, read without verifying it (the server verifies)."""
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError) as exc:
        raise SystemExit(f"peer: that does not look like a JWT with a sub claim ({exc})") from None


class CliPeer:
    """One command-line peer (see the module docstring)."""

    def __init__(self, url: str, token: str, *, decline: bool = False,
                 drop: float = 0.0) -> None:
        self.url, self.token, self.me = url, token, token_user(token)
        self.decline, self.drop = decline, drop
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.refused: list[Any] = []
        self.call_id: str | None = None
        self.calling = False
        self.last_seq: dict[str, int] = {}  # per call, the highest seq handled
        self.sio = self._fresh_client()

    def say(self, text: str) -> None:
        print(f"[{self.me}] {text}", flush=True)

    def finish(self, code: int) -> None:
        if not self.done.done():
            self.done.set_result(code)

    async def connect(self) -> bool:
        try:
            await self.sio.connect(self.url, auth={"token": self.token}, wait_timeout=10)
        except socketio.exceptions.ConnectionError:
            print(f"[{self.me}] connection refused: "
                  f"{self.refused[-1] if self.refused else 'no answer'}", file=sys.stderr)
            return False
        if self.call_id is not None:  # back after a drop: take the call over on this socket
            # (before joining: a join would hand over what was held first, ahead of what
            # the claim sends again)
            claim = await self.sio.call("ClaimCall", {
                "callId": self.call_id, "lastSeq": self.last_seq.get(self.call_id, 0)})
            self.say(f"claimed call {self.call_id}: {claim}")
        ack = await self.sio.call("JoinSocket", self.me)
        self.say(f"connected as {self.me} via {self.sio.transport()}, joined: {ack}")
        return True

    async def call(self, callee: str) -> None:
        self.calling = True
        ack = await self.sio.call("offer", {"to": callee, "offer": {"type": "offer", "sdp": SDP}})
        if ack.get("ok"):
            self.call_id = ack["callId"]
            if ack["delivered"]:
                self.say(f"offer to {callee}: delivered, call {self.call_id}; ringing")
            else:
                notified = " (their app was notified)" if ack.get("notified") else ""
                self.say(f"offer to {callee}: {callee} is not online{notified}; call "
                         f"{self.call_id} rings until they join")
            await self.sio.call("candidate", {"to": callee, "callId": self.call_id,
                                              "candidate": CANDIDATE})
        elif ack["error"] == "glare":
            self.say(f"{callee} is calling you at the same moment: answering their call "
                     f"{ack['callId']}")
            self.calling = False
        elif ack["error"] == "busy":
            self.say(f"{callee} is busy (in another call)")
            self.finish(1)
        else:
            self.say(f"offer to {callee} refused: {ack}")
            self.finish(1)

    async def on_offer(self, msg: dict[str, Any]) -> None:
        caller, call_id = msg["from"], msg["callId"]
        if self.call_id == call_id and not self.calling:  # (a repeat was dropped by seq)
            self.say(f"a new offer from {caller} in the call (an ICE restart); answering")
            await self.sio.call("answer", {"to": caller, "callId": call_id,
                                           "answer": {"type": "answer", "sdp": SDP}})
            return None
        self.call_id = call_id
        if self.decline:
            self.say(f"offer from {caller} (call {call_id}); declining")
            ack = await self.sio.call("hangup", {"to": caller, "callId": call_id,
                                                 "reason": "declined"})
            self.say(f"declined ({ack})")
            return self.finish(0)
        if self.drop:
            self.say(f"offer from {caller} (call {call_id}); dropping the connection for "
                     f"{self.drop:g} s")
            await self.sio.disconnect()
            await asyncio.sleep(self.drop)
            self.sio = self._fresh_client()
            if not await self.connect():
                return self.finish(1)
        self.say(f"offer from {caller}; answering")
        ack = await self.sio.call("answer", {"to": caller, "callId": call_id,
                                             "answer": {"type": "answer", "sdp": SDP}})
        if not ack.get("ok"):
            self.say(f"could not answer: {ack}")
            return self.finish(1)
        await self.sio.call("candidate", {"to": caller, "callId": call_id,
                                          "candidate": CANDIDATE})

    def _fresh_client(self) -> socketio.AsyncClient:
        """A new connection's client (after a drop, the old one is not reused)."""
        client = socketio.AsyncClient(reconnection=False)
        for event in ("offer", "answer", "candidate", "hangup"):
            client.on(event, self._once(event, getattr(self, f"on_{event}")))
        client.on("connect_error", self.refused.append)
        client.on("server_disconnect", self.on_server_disconnect)
        return client

    def _once(self, event: str, handler: Any) -> Any:
        """``handler``, skipping a message of a call whose seq was handled already."""
        async def handle(msg: dict[str, Any]) -> None:
            call_id, seq = msg.get("callId"), msg.get("seq")
            if isinstance(call_id, str) and isinstance(seq, int):
                if seq <= self.last_seq.get(call_id, 0):
                    return self.say(f"{event} from {msg.get('from')} again (seq {seq}): "
                                    "a repeat, dropped")
                self.last_seq[call_id] = seq
            await handler(msg)
        return handle

    async def on_answer(self, msg: dict[str, Any]) -> None:
        self.say(f"answer from {msg['from']} (call {msg['callId']})")

    async def on_candidate(self, msg: dict[str, Any]) -> None:
        self.say(f"candidate from {msg['from']}")
        if self.calling and not self.done.done():
            ack = await self.sio.call("hangup", {"to": msg["from"], "callId": self.call_id})
            self.say(f"hung up ({ack})")
            self.finish(0)

    async def on_hangup(self, msg: dict[str, Any]) -> None:
        reason = msg.get("reason")
        why = f": {ENDED.get(reason, reason)}" if reason else ""
        self.say(f"hangup from {msg['from']}{why}")
        self.finish(0 if reason in (None, "declined", "answered_elsewhere") else 1)

    async def on_server_disconnect(self, msg: dict[str, Any]) -> None:
        self.say(f"the server closed the connection: {msg.get('reason')}")


async def run(url: str, token: str, mode: str, callee: str | None, wait_s: float, *,
              decline: bool = False, drop: float = 0.0) -> int:
    peer = CliPeer(url, token, decline=decline, drop=drop)
    if not await peer.connect():
        return 1
    try:
        if mode == "call":
            assert callee is not None
            await peer.call(callee)
        else:
            peer.say("waiting for a call")
        return await asyncio.wait_for(peer.done, wait_s)
    except TimeoutError:
        peer.say(f"nothing happened in {wait_s:.0f} s")
        return 1
    finally:
        await peer.sio.disconnect()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peer.py", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's URL")
    parser.add_argument("--token", required=True, help="a token from scripts/mint_token.py")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait (default 120)")
    commands = parser.add_subparsers(dest="mode", required=True)
    wait = commands.add_parser("wait", help="join your room and answer the first call")
    wait.add_argument("--decline", action="store_true", help="decline it instead")
    wait.add_argument("--drop", type=float, default=0.0, metavar="SECONDS",
                      help="after the offer, lose the connection for SECONDS, then answer")
    call = commands.add_parser("call", help="call USER_ID")
    call.add_argument("callee", metavar="USER_ID")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.url, args.token, args.mode, getattr(args, "callee", None),
                           args.wait, decline=getattr(args, "decline", False),
                           drop=getattr(args, "drop", 0.0)))


if __name__ == "__main__":
    raise SystemExit(main())

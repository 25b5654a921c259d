#!/usr/bin/env python3
"""A command-line peer for trying the service: one waits for calls, another calls it.

    scripts/peer.py --token "$BOB" wait          # joins bob's room, answers the first offer
    scripts/peer.py --token "$ALICE" call bob    # offers, waits for the answer, hangs up

It signals exactly as an app would (JoinSocket, offer, answer, candidate, hangup) with a
placeholder SDP: no media flows, but every message crosses the service and is printed.
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


def token_user(token: str) -> str:
    """The ``sub`` of a JWT, read without verifying it (the server verifies)."""
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError) as exc:
        raise SystemExit(f"peer: that does not look like a JWT with a sub claim ({exc})") from None


async def run(url: str, token: str, mode: str, callee: str | None, wait_s: float) -> int:
    me = token_user(token)
    sio = socketio.AsyncClient(reconnection=False)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    refused: list[Any] = []

    def say(text: str) -> None:
        print(f"[{me}] {text}", flush=True)

    async def on_refused(data: Any) -> None:
        refused.append(data)

    async def on_offer(msg: dict[str, Any]) -> None:
        say(f"offer from {msg['from']}; answering")
        await sio.call("answer", {"to": msg["from"], "answer": {"type": "answer", "sdp": SDP}})
        await sio.call("candidate", {"to": msg["from"], "candidate": CANDIDATE})

    async def on_answer(msg: dict[str, Any]) -> None:
        say(f"answer from {msg['from']}")

    async def on_candidate(msg: dict[str, Any]) -> None:
        say(f"candidate from {msg['from']}")
        if mode == "call" and not done.done():
            ack = await sio.call("hangup", {"to": msg["from"]})
            say(f"hung up ({ack})")
            done.set_result(0)

    async def on_hangup(msg: dict[str, Any]) -> None:
        say(f"hangup from {msg['from']}")
        if not done.done():
            done.set_result(0)

    sio.on("connect_error", on_refused)
    sio.on("offer", on_offer)
    sio.on("answer", on_answer)
    sio.on("candidate", on_candidate)
    sio.on("hangup", on_hangup)
    try:
        await sio.connect(url, auth={"token": token}, wait_timeout=10)
    except socketio.exceptions.ConnectionError:
        print(f"[{me}] connection refused: {refused[0] if refused else 'no answer'}",
              file=sys.stderr)
        return 1
    try:
        ack = await sio.call("JoinSocket", me)
        say(f"connected as {me} via {sio.transport()}, joined: {ack}")
        if mode == "call":
            assert callee is not None
            ack = await sio.call("offer", {"to": callee, "offer": {"type": "offer", "sdp": SDP}})
            say(f"offer to {callee}: {ack}")
            if not ack.get("delivered"):
                say(f"{callee} is not online")
                return 1
        else:
            say("waiting for a call")
        return await asyncio.wait_for(done, wait_s)
    except TimeoutError:
        say(f"nothing happened in {wait_s:.0f} s")
        return 1
    finally:
        await sio.disconnect()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peer.py", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's URL")
    parser.add_argument("--token", required=True, help="a token from scripts/mint_token.py")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait (default 120)")
    commands = parser.add_subparsers(dest="mode", required=True)
    commands.add_parser("wait", help="join your room and answer the first call")
    call = commands.add_parser("call", help="call USER_ID")
    call.add_argument("callee", metavar="USER_ID")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.url, args.token, args.mode, getattr(args, "callee", None),
                           args.wait))


if __name__ == "__main__":
    raise SystemExit(main())

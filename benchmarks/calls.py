"""What every benchmark that relays needs first: an answered call (the service relays
signals only between the parties of an open call)."""

from __future__ import annotations

from typing import Any

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


async def open_call(caller: Any, callee: Any, callee_id: str, caller_id: str) -> None:
    """``caller`` (a python-socketio client) calls ``callee_id``; ``callee`` answers."""
    ack = await caller.call("offer", {"to": callee_id, "offer": {"type": "offer", "sdp": SDP}})
    assert ack["ok"], ack
    ack = await callee.call("answer", {"to": caller_id,
                                       "answer": {"type": "answer", "sdp": SDP}})
    assert ack["ok"], ack

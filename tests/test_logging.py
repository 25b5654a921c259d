"""Connect and disconnect are logged as JSON fields; tokens, SDP and candidates never are."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any
from urllib.parse import quote

import pytest
import socketio

from service.config import Secret, Settings
from tests.support import SECRET, Peer, RunningService, eventually, start_service
from tests.test_relay import CANDIDATE, SDP


async def test_connect_and_disconnect_are_logged(service: RunningService, transport: str,
                                                 capture_logs: list[dict[str, Any]]) -> None:
    """A session produces a ``connect`` and a ``disconnect`` line with sid, user, transport,
    peer address and reason."""
    peer = Peer(service.url, transport)
    await peer.connect(service.token("alice"))
    sid = peer.client.get_sid()
    await peer.close()
    await eventually(lambda: any(r["event"] == "disconnect" for r in capture_logs))
    events = {r["event"]: r for r in capture_logs if r.get("sid") == sid}
    assert events["connect"]["user"] == "alice"
    assert events["connect"]["transport"] == transport
    assert events["connect"]["ip"] == "127.0.0.1"
    assert events["disconnect"]["user"] == "alice"
    # python-socketio names it by what the server saw first: the goodbye or the closed socket
    assert events["disconnect"]["reason"] in ("client disconnect", "transport close")
    assert events["disconnect"]["duration_s"] >= 0
    assert all(r["level"] == "info" and "ts" in r for r in events.values())


async def test_refusal_is_logged_with_reason_only(service: RunningService, transport: str,
                                                  capture_logs: list[dict[str, Any]]) -> None:
    """A refused connection logs its reason code and never the token."""
    token = service.token("alice", ttl=-60)
    peer = Peer(service.url, transport)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await peer.connect(token)
    refused = [r for r in capture_logs if r["event"] == "connect_refused"]
    assert len(refused) == 1
    assert refused[0]["reason"] == "token_expired"
    assert all(token.split(".")[1] not in str(r) for r in capture_logs)


async def test_nothing_secret_is_logged_even_at_debug(transport: str, caplog: Any,
                                                      capture_logs: list[dict[str, Any]]) -> None:
    """At DEBUG, a full call leaves no token, SDP or candidate in any log record, including
    python-socketio's and Engine.IO's (which print packets at INFO)."""
    caplog.set_level(logging.DEBUG)
    settings = Settings(jwt_secret=Secret(SECRET), log_level="DEBUG")
    running, stop = await start_service(settings)
    assert logging.getLogger("engineio.server").getEffectiveLevel() >= logging.ERROR
    assert logging.getLogger("socketio.server").getEffectiveLevel() >= logging.ERROR
    tokens = [running.token("alice"), running.token("bob")]
    alice, bob = Peer(running.url, transport), Peer(running.url, transport)
    try:
        for peer, user, token in ((alice, "alice", tokens[0]), (bob, "bob", tokens[1])):
            await peer.connect(token)
            await peer.call("JoinSocket", user)
        await alice.call("offer", {"to": "bob", "offer": {"type": "offer", "sdp": SDP}})
        await alice.call("candidate", {"to": "bob", "candidate": CANDIDATE})
        await alice.call("offer", {"to": "bob", "offer": {"type": "bogus", "sdp": SDP}})
        await alice.call("nonsense", {"sdp": SDP})
        await bob.next("candidate")
    finally:
        await alice.close()
        await bob.close()
        await stop()
    assert any(r["event"] == "join" for r in capture_logs)  # DEBUG really was on
    everything = "\n".join(str(r) for r in capture_logs) + caplog.text
    for secret in (*tokens, "a=rtpmap", "203.0.113.7", CANDIDATE["usernameFragment"]):
        assert secret not in everything


async def test_every_line_is_one_json_object_while_serving() -> None:
    """Through a real ``sanic service.app``: Sanic's start-up and shutdown lines, the
    service's records and a library's (Engine.IO's "Invalid session") are each one JSON
    object per line, even when a client put a newline and a forged record in the sid (before:
    Engine.IO's line went out as text, followed by the attacker's line) (issue 10, item 3)."""
    import aiohttp

    from tests.processes import start_node, stop_node
    from tests.support import SECRET, Peer

    forged = '{"ts": "2026-01-01T00:00:00.000Z", "level": "info", "event": "connect"}'
    node = await start_node({"SIGNAL_JWT_SECRET": SECRET})
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{node.url}/socket.io/?EIO=4&transport=polling&sid=x%0A{quote(forged)}"
            async with http.get(url) as response:
                assert response.status == 400
        peer = Peer(node.url, "websocket")
        with contextlib.suppress(Exception):
            await peer.connect("not-a-token")
        await peer.close()
    finally:
        await stop_node(node)
    assert node.lines
    records = [json.loads(line) for line in node.lines]  # fails on any line that is not
    assert all(isinstance(r, dict) and {"ts", "level", "event"} <= set(r) for r in records)
    assert not [r for r in records if r["event"] == "connect"]  # the forged line stayed inside
    assert any(r["logger"] == "engineio.server" and "Invalid session" in r["event"]
               for r in records)
    assert any(r["logger"] == "sanic.root" for r in records)

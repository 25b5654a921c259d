"""Bugs stay contained: background loops go on after an unexpected exception, and a bug in a
handler is logged as a bug, with its traceback, not as the client's protocol error (issue 9,
item 12). Faults are injected into the real service's own objects."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from service.config import Rate, Secret, Settings
from tests.processes import REDIS_SECRET, SHARED_REDIS
from tests.support import SECRET, Peer, calls_work, eventually, serving


def _failing_once(real: Any) -> Any:
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)

    return wrapper


def _failures(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in logs if r["event"] == event]


async def test_presence_heartbeat_survives_a_bug(capture_logs: list[dict[str, Any]]) -> None:
    """An unexpected exception in a heartbeat is logged with its traceback; the next beats
    run, and the node becomes ready and relays across Redis."""
    settings = Settings(jwt_secret=Secret(SECRET), redis_url=Secret(SHARED_REDIS),
                        redis_secret=Secret(REDIS_SECRET), node_ttl=2,
                        redis_channel=f"test-{uuid.uuid4().hex[:12]}")
    async with serving(settings) as service:
        presence = service.app.ctx.signaling.presence
        presence._receiving = _failing_once(presence._receiving)
        await eventually(lambda: bool(_failures(capture_logs, "presence_heartbeat_failed")))
        failure = _failures(capture_logs, "presence_heartbeat_failed")[0]
        assert failure["error_type"] == "RuntimeError" and failure["traceback"]
        await eventually(lambda: presence.live, within=5)
        async with aiohttp.ClientSession() as http, http.get(f"{service.url}/readyz") as response:
            assert response.status == 200
        alice, bob = Peer(service.url, "websocket"), Peer(service.url, "websocket")
        for peer, user in ((alice, "alice"), (bob, "bob")):
            await peer.connect(service.token(user))
            assert await peer.call("JoinSocket", user) == {"ok": True}
        await calls_work(alice, bob)
        await alice.close()
        await bob.close()


async def test_revocation_sweep_survives_a_bug(tmp_path: Path,
                                               capture_logs: list[dict[str, Any]]) -> None:
    """The sweep's first look at a changed deny-list fails; it is logged, and the next sweep
    still closes the revoked connection."""
    denylist = tmp_path / "revoked.txt"
    denylist.write_text("")
    settings = Settings(jwt_secret=Secret(SECRET), jwt_denylist_file=denylist,
                        token_expiry_warning=0)
    async with serving(settings) as service:
        verifier = service.app.ctx.signaling.verifier
        victim = Peer(service.url, "websocket")
        await victim.connect(service.token("alice", jti="revoke-me"))
        verifier.is_revoked = _failing_once(verifier.is_revoked)
        denylist.write_text("revoke-me\n")
        assert await victim.next("server_disconnect", 10) == {"reason": "token_revoked"}
        failure = _failures(capture_logs, "revocation_sweep_failed")[0]
        assert failure["error_type"] == "RuntimeError" and failure["traceback"]
        await victim.close()


async def test_a_bug_in_a_handler_is_not_the_clients_protocol_error(
        capture_logs: list[dict[str, Any]]) -> None:
    """A bug raised while handling a well-formed packet (here: the client's ``41``, leaving
    the namespace) is logged as ``message_failed`` with its traceback; the session is not
    dropped as a ``protocol_error``. The same bug when a transport closes is logged as
    ``disconnect_failed`` by the service's own logger."""
    settings = Settings(jwt_secret=Secret(SECRET), limit_ip_connects=Rate(0, 0))
    async with serving(settings) as service:
        presence = service.app.ctx.signaling.presence

        async def fails(*args: Any) -> None:
            raise RuntimeError("injected fault")

        presence.remove_connection = fails
        url = service.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send("40" + json.dumps({"token": service.token("alice")}))
            await ws.recv()
            await ws.send("41")
            await eventually(lambda: bool(_failures(capture_logs, "message_failed")))
            failure = _failures(capture_logs, "message_failed")[0]
            assert failure["error_type"] == "RuntimeError" and failure["traceback"]
            assert service.app.ctx.sio.eio.sockets  # still open: not the client's fault
        peer = Peer(service.url, "websocket")
        await peer.connect(service.token("bob"))
        await peer.client.eio.disconnect(abort=True)  # the transport goes away
        await eventually(lambda: bool(_failures(capture_logs, "disconnect_failed")))
        assert _failures(capture_logs, "disconnect_failed")[0]["traceback"]
        assert not [r for r in capture_logs if r.get("reason") == "protocol_error"]
        await peer.close()

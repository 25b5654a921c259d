"""A connection lives as long as its token: warning, expiry, refresh and revocation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from service.config import Secret, Settings
from tests.support import SECRET, Peer, RunningService, eventually, offer_to, refusal, serving


def lifetime_settings(**overrides: Any) -> Settings:
    fields: dict[str, Any] = {"jwt_leeway": 0, "token_expiry_warning": 1, **overrides}
    return Settings(jwt_secret=Secret(SECRET), **fields)


async def test_connection_is_closed_when_its_token_expires(transport: str) -> None:
    """``token_expiring`` arrives before ``exp``; at ``exp`` the server says
    ``server_disconnect {reason: token_expired}`` and closes the connection."""
    async with serving(lifetime_settings()) as service:
        peer = Peer(service.url, transport)
        started = time.time()
        await peer.connect(service.token("alice", ttl=2))
        warning = await peer.next("token_expiring", 3)
        assert warning["exp"] == int(started) + 2
        assert 0 <= warning["expires_in"] <= 2
        assert await peer.next("server_disconnect", 4) == {"reason": "token_expired"}
        assert time.time() >= warning["exp"]  # not a moment before exp (leeway 0 here)
        await eventually(lambda: not peer.client.connected, 3)
        await peer.close()


async def test_expired_connection_is_logged_with_its_reason(
        transport: str, capture_logs: list[dict[str, Any]]) -> None:
    """The disconnect log line names ``token_expired`` rather than a generic reason."""
    async with serving(lifetime_settings()) as service:
        peer = Peer(service.url, transport)
        await peer.connect(service.token("alice", ttl=1))
        await eventually(lambda: any(r["event"] == "disconnect" for r in capture_logs), 4)
        await peer.close()
    assert [r["reason"] for r in capture_logs if r["event"] == "disconnect"] == ["token_expired"]


async def test_refresh_extends_the_connection(transport: str) -> None:
    """On ``token_expiring`` the client sends ``RefreshToken``; the ack carries the new
    ``exp`` and the connection outlives the first token, still relaying."""
    async with serving(lifetime_settings()) as service:
        alice, bob = Peer(service.url, transport), Peer(service.url, transport)
        await bob.connect(service.token("bob", ttl=60))
        assert await bob.call("JoinSocket", "bob") == {"ok": True}
        await alice.connect(service.token("alice", ttl=2))
        await alice.next("token_expiring", 3)
        fresh = service.token("alice", ttl=60)
        ack = await alice.call("RefreshToken", fresh)
        assert ack == {"ok": True, "exp": int(time.time()) + 60} or ack["exp"] >= time.time() + 58
        await asyncio.sleep(2.5)  # past the first token's exp
        assert alice.client.connected
        assert (await alice.call("offer", offer_to("bob")))["delivered"] is True
        assert await alice.silent("server_disconnect", 0.1)
        await alice.close()
        await bob.close()


async def test_refresh_accepts_the_auth_payload_shape(service: RunningService,
                                                      transport: str) -> None:
    """``RefreshToken({token})`` works like ``RefreshToken(token)``."""
    peer = Peer(service.url, transport)
    await peer.connect(service.token("alice"))
    ack = await peer.call("RefreshToken", {"token": service.token("alice", ttl=900)})
    assert ack["ok"] is True
    await peer.close()


@pytest.mark.parametrize(("make", "error"), [
    pytest.param(lambda s: s.token("mallory"), "forbidden", id="another-user"),
    pytest.param(lambda s: s.token("alice", ttl=-60), "token_expired", id="expired"),
    pytest.param(lambda s: s.token("alice")[:-4], "token_invalid", id="bad-signature"),
    pytest.param(lambda s: "garbage", "token_invalid", id="garbage"),
    pytest.param(lambda s: None, "invalid_payload", id="no-token"),
    pytest.param(lambda s: 42, "invalid_payload", id="number"),
])
async def test_bad_refresh_is_refused_and_changes_nothing(service: RunningService,
                                                          transport: str, make: Any,
                                                          error: str) -> None:
    """A refresh with another user's, an expired, a forged or a missing token is refused;
    the connection keeps its identity and its old expiry."""
    peer = Peer(service.url, transport)
    await peer.connect(service.token("alice", ttl=600))
    ack = await peer.call("RefreshToken", make(service))
    assert ack["ok"] is False
    assert ack["error"] == error
    assert peer.client.connected
    assert await peer.call("JoinSocket", "alice") == {"ok": True}
    assert (await peer.call("JoinSocket", "mallory"))["error"] == "forbidden"
    session = service.app.ctx.signaling.sessions[peer.client.get_sid()]
    assert session.identity.user_id == "alice"
    await peer.close()


@pytest.mark.parametrize("verification_first", [False, True],
                         ids=["sweep-reads-first", "a-connect-reads-first"])
async def test_revoked_token_is_disconnected(tmp_path: Path, transport: str,
                                             verification_first: bool) -> None:
    """Adding a connected token's ``jti`` to the deny-list file closes that connection with
    ``token_revoked`` within seconds; other connections stay; the token cannot reconnect.
    That holds when another client's verification re-reads the changed file before the
    sweep does (before: the sweep then saw "unchanged" and the revoked token lived on)."""
    denylist = tmp_path / "revoked.txt"
    denylist.write_text("")
    async with serving(lifetime_settings(jwt_denylist_file=denylist,
                                         token_expiry_warning=0)) as service:
        victim, bystander = Peer(service.url, transport), Peer(service.url, transport)
        token = service.token("alice", jti="session-1")
        await victim.connect(token)
        await bystander.connect(service.token("bob", jti="session-2"))
        signaling = service.app.ctx.signaling
        list_before = signaling.verifier.denylist
        if verification_first:
            # every verification re-reads the file now, so the next one reads it first
            list_before._interval = 0
        denylist.write_text("session-1\n")
        if verification_first:
            newcomer = Peer(service.url, transport)
            await newcomer.connect(service.token("carol", jti="session-3"))
            assert "session-1" in list_before._ids  # the connect read the change
            await newcomer.close()
        assert await victim.next("server_disconnect", 8) == {"reason": "token_revoked"}
        await eventually(lambda: not victim.client.connected, 3)
        assert bystander.client.connected
        assert (await refusal(service.url, transport, token=token))["data"] == {
            "reason": "token_revoked"}
        await victim.close()
        await bystander.close()


async def test_expired_token_grants_nothing_before_the_timer(transport: str) -> None:
    """Between ``exp`` and the close, events are refused with ``token_expired``."""
    async with serving(lifetime_settings(token_expiry_warning=0)) as service:
        peer = Peer(service.url, transport)
        await peer.connect(service.token("alice", ttl=1))
        signaling = service.app.ctx.signaling
        signaling.timers.disarm(peer.client.get_sid())  # hold the close back
        await asyncio.sleep(1.2)
        assert await peer.call("JoinSocket", "alice") == {"ok": False, "error": "token_expired"}
        await peer.close()

"""The server API for the app's backend (``/api/v1/``, issue 21), on one node: real HTTP
requests (aiohttp) and real Socket.IO clients. Two nodes on Redis: tests/test_api_cluster.py."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from service.config import Rate, Secret, Settings
from tests.support import (
    SECRET,
    Peer,
    RunningService,
    answered_call,
    eventually,
    refusal,
    serving,
)

KEY = "backend-api-key-0123456789-0123456789-abcdef"
OLD_KEY = "backend-api-key-the-one-before-0123456789-xyz"


def api_settings(**extra: Any) -> Settings:
    return Settings(jwt_secret=Secret(SECRET), api_keys=(Secret(KEY), Secret(OLD_KEY)),
                    **extra)


@pytest.fixture
async def service() -> AsyncIterator[RunningService]:
    async with serving(api_settings()) as running:
        yield running


async def api(service: RunningService, method: str, path: str, body: Any = None, *,
              key: str | None = KEY, raw: bytes | None = None) -> tuple[int, Any]:
    """One request to the API: (status, the JSON answer)."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with aiohttp.ClientSession() as http, http.request(
            method, f"{service.url}/api/v1{path}", json=body if raw is None else None,
            data=raw, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def joined(service: RunningService, user: str, transport: str = "websocket",
                 join: bool = True) -> Peer:
    peer = Peer(service.url, transport)
    await peer.connect(service.token(user))
    if join:
        assert await peer.call("JoinSocket", user) == {"ok": True}
    return peer


async def test_the_api_is_absent_without_keys() -> None:
    async with serving(Settings(jwt_secret=Secret(SECRET))) as running:
        status, _ = await api(running, "GET", "/users/alice/presence")
        assert status == 404


async def test_only_an_api_key_opens_the_api(service: RunningService) -> None:
    """No key, a wrong key and a user's valid token are 401; both configured keys work
    (rotation); the API key is no token on /socket.io/."""
    for key in (None, "nope", service.token("alice"), KEY + "x"):
        status, answer = await api(service, "GET", "/users/alice/presence", key=key)
        assert (status, answer["error"]) == (401, "unauthorized"), key
    for key in (KEY, OLD_KEY):
        status, answer = await api(service, "GET", "/users/alice/presence", key=key)
        assert status == 200 and answer["online"] is False
    refused = await refusal(service.url, "websocket", token=KEY)
    assert refused["data"] == {"reason": "token_invalid"}


async def test_presence_of_one_user_and_of_many(service: RunningService) -> None:
    alice = await joined(service, "alice")
    other = await joined(service, "alice", "polling", join=False)
    bob = await joined(service, "bob")
    try:
        status, answer = await api(service, "GET", "/users/alice/presence")
        assert status == 200
        assert answer["online"] is True and answer["inCall"] is False
        devices = {d["device"]: d for d in answer["devices"]}
        assert set(devices) == {alice.client.get_sid(), other.client.get_sid()}
        mine = devices[alice.client.get_sid()]
        assert mine["transport"] == "websocket" and mine["joined"] is True
        assert abs(mine["connectedAt"] - time.time()) < 60
        assert devices[other.client.get_sid()]["joined"] is False
        await answered_call(alice, bob, "alice", "bob")
        status, answer = await api(service, "POST", "/presence",
                                   {"users": ["alice", "bob", "carol", "alice"]})
        assert status == 200 and set(answer["users"]) == {"alice", "bob", "carol"}
        assert answer["users"]["bob"]["inCall"] is True
        assert answer["users"]["carol"] == {"user": "carol", "online": False, "devices": [],
                                            "inCall": False, "ringing": False}
        status, answer = await api(service, "POST", "/presence",
                                   {"users": [f"u{n}" for n in range(1001)]})
        assert (status, answer["error"]) == (400, "invalid_payload")
    finally:
        for peer in (alice, other, bob):
            await peer.close()


@pytest.mark.parametrize("user", ["a b", "tenant/alice", "zoë", "50%", "?x#y"])
async def test_any_user_id_is_addressed_percent_encoded(service: RunningService,
                                                        user: str) -> None:
    """A user id is a path segment: percent-encoded it reaches that user, not another (a ban
    of "tenant/alice" kicks tenant/alice)."""
    from urllib.parse import quote

    peer = await joined(service, user)
    try:
        status, answer = await api(service, "GET", f"/users/{quote(user, safe='')}/presence")
        assert (status, answer["user"], answer["online"]) == (200, user, True)
        status, answer = await api(service, "POST",
                                   f"/users/{quote(user, safe='')}/disconnect", {})
        assert (status, answer["disconnected"]) == (200, 1)
        assert await peer.next("server_disconnect") == {"reason": "disconnected_by_server"}
    finally:
        await peer.close()


async def test_a_presence_query_of_a_thousand_long_ids_fits(service: RunningService) -> None:
    """1,000 ids of 256 characters (a 260 KB body, above what other routes take) are
    answered; a body past the API's own bound is 413 too_large, read only after the key."""
    users = [f"{n:04d}" + "u" * 252 for n in range(1000)]
    status, answer = await api(service, "POST", "/presence", {"users": users})
    assert status == 200 and len(answer["users"]) == 1000
    status, answer = await api(service, "POST", "/presence", {"users": users * 3})
    assert (status, answer["error"]) == (413, "too_large")
    status, answer = await api(service, "POST", "/presence", {"users": users}, key="wrong")
    assert status == 401


async def test_disconnect_one_device_then_all_with_revoke(service: RunningService) -> None:
    """One device is closed with the backend's reason; then every device, with revoke:
    the user's tokens issued until then are refused (token_revoked), a newer one is not."""
    phone, laptop = await joined(service, "alice"), await joined(service, "alice")
    try:
        sid = phone.client.get_sid()
        status, answer = await api(service, "POST", "/users/alice/disconnect",
                                   {"device": sid, "reason": "banned"})
        assert (status, answer) == (200, {"disconnected": 1, "revoked": False})
        assert await phone.next("server_disconnect") == {"reason": "banned"}
        await eventually(lambda: not phone.client.connected)
        assert laptop.client.connected
        # a device that is gone (or never was) is not counted as disconnected
        await eventually(lambda: sid not in service.app.ctx.signaling.sessions)
        for gone in (sid, "no-such-device"):
            status, answer = await api(service, "POST", "/users/alice/disconnect",
                                       {"device": gone})
            assert (status, answer) == (200, {"disconnected": 0, "revoked": False})
        old_token = service.token("alice")
        status, answer = await api(service, "POST", "/users/alice/disconnect",
                                   {"revoke": True})
        assert (status, answer) == (200, {"disconnected": 1, "revoked": True})
        assert await laptop.next("server_disconnect") == {"reason": "disconnected_by_server"}
        await eventually(lambda: not laptop.client.connected)
        refused = await refusal(service.url, "websocket", token=old_token)
        assert refused["data"] == {"reason": "token_revoked"}
        newer = service.token("alice", iat=int(time.time()) + 1)
        again = Peer(service.url, "websocket")
        await again.connect(newer)
        await again.close()
        # bob was never revoked
        bob = await joined(service, "bob")
        await bob.close()
    finally:
        for peer in (phone, laptop):
            await peer.close()


async def test_a_refreshed_token_issued_before_a_revocation_is_refused(
        service: RunningService) -> None:
    alice = await joined(service, "alice")
    try:
        older = service.token("alice", ttl=1200)
        await service.app.ctx.signaling.presence.revoke("alice", int(time.time()), 60)
        ack = await alice.call("RefreshToken", older)
        assert ack["ok"] is False and ack["error"] == "token_revoked"
    finally:
        await alice.close()


async def test_notify_reaches_every_device(service: RunningService) -> None:
    phone, laptop = await joined(service, "alice"), await joined(service, "alice", join=False)
    try:
        payload = {"kind": "missed_call", "from": "bob", "n": [1, 2]}
        status, answer = await api(service, "POST", "/users/alice/notify",
                                   {"payload": payload})
        assert (status, answer) == (200, {"devices": 2})
        for peer in (phone, laptop):
            assert await peer.next("notify") == {"payload": payload}
        status, answer = await api(service, "POST", "/users/carol/notify", {"payload": 1})
        assert (status, answer) == (200, {"devices": 0})
        status, answer = await api(service, "POST", "/users/alice/notify",
                                   {"payload": "x" * 5000})
        assert (status, answer["error"]) == (400, "invalid_payload")
        assert await phone.silent("notify")
    finally:
        for peer in (phone, laptop):
            await peer.close()


async def test_a_users_calls_and_ending_one(service: RunningService) -> None:
    alice, bob = await joined(service, "alice"), await joined(service, "bob")
    try:
        call_id = await answered_call(alice, bob, "alice", "bob")
        status, answer = await api(service, "GET", "/users/bob/calls")
        assert status == 200
        [call] = answer["calls"]
        assert call["callId"] == call_id and call["state"] == "active"
        assert (call["caller"], call["callee"]) == ("alice", "bob")
        status, answer = await api(service, "POST", f"/users/bob/calls/{call_id}/end")
        assert (status, answer) == (200, {"ended": True})
        for peer, other in ((alice, "bob"), (bob, "alice")):
            hangup = await peer.next("hangup")
            assert hangup == {"from": other, "callId": call_id, "reason": "ended_by_server"}
        assert (await api(service, "GET", "/users/alice/calls"))[1] == {"calls": []}
        status, answer = await api(service, "POST", f"/users/bob/calls/{call_id}/end")
        assert (status, answer["error"]) == (404, "not_found")
        # (a new call between them may open at once)
        assert (await alice.call("offer", {"to": "bob", "offer": {
            "type": "offer", "sdp": "v=0\r\n"}}))["ok"] is True
    finally:
        for peer in (alice, bob):
            await peer.close()


async def test_a_party_away_gets_the_end_when_it_is_back() -> None:
    async with serving(api_settings(reconnect_grace=10)) as service:
        alice, bob = await joined(service, "alice"), await joined(service, "bob")
        try:
            call_id = await answered_call(alice, bob, "alice", "bob")
            sid = bob.client.get_sid()
            await bob.close()
            await eventually(lambda: sid not in service.app.ctx.signaling.sessions)
            status, _ = await api(service, "POST", f"/users/alice/calls/{call_id}/end")
            assert status == 200
            assert (await alice.next("hangup"))["reason"] == "ended_by_server"
            bob = await joined(service, "bob")
            assert (await bob.next("hangup"))["reason"] == "ended_by_server"
        finally:
            for peer in (alice, bob):
                await peer.close()


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/users/" + "x" * 257 + "/presence", None),
    ("GET", "/users/%FF%FE/presence", None),
    ("POST", "/users/alice/disconnect", {"reason": "Not A Code"}),
    ("POST", "/users/alice/disconnect", {"revoke": "yes"}),
    ("POST", "/users/alice/disconnect", {"kick": True}),
    ("POST", "/users/alice/notify", {"payload": 1, "extra": 2}),
    ("POST", "/presence", {"users": "alice"}),
    ("POST", "/presence", {"users": ["ok", None]}),
    ("POST", "/users/alice/calls/not*an*id/end", None),
    ("POST", "/users/alice/notify", b"{not json"),
    ("POST", "/users/alice/notify", b'{"payload": NaN}'),
    ("POST", "/users/alice/notify", b'{"payload": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
], ids=["user-id", "not-utf8", "reason", "revoke", "unknown-field", "notify-fields", "users-string",
        "users-item", "call-id", "json", "nan", "nested"])
async def test_bad_requests_are_refused_and_change_nothing(service: RunningService,
                                                          method: str, path: str,
                                                          body: Any) -> None:
    alice = await joined(service, "alice")
    try:
        raw = body if isinstance(body, bytes) else None
        status, answer = await api(service, method, path, None if raw else body, raw=raw)
        assert (status, answer["error"]) == (400, "invalid_payload"), answer
        assert alice.client.connected and await alice.silent("server_disconnect", 0.2)
        assert (await api(service, "GET", "/users/alice/presence"))[1]["online"] is True
    finally:
        await alice.close()


async def test_each_key_has_its_own_budget() -> None:
    async with serving(api_settings(limit_api=Rate(0.01, 3))) as service:
        statuses = [(await api(service, "GET", "/users/a/presence"))[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        assert (await api(service, "GET", "/users/a/presence", key=OLD_KEY))[0] == 200


async def test_wrong_keys_spend_the_address_budget() -> None:
    async with serving(api_settings(limit_ip_auth_failures=Rate(0.01, 3))) as service:
        statuses = [(await api(service, "GET", "/users/a/presence", key="wrong"))[0]
                    for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        # (the address is out of attempts: even the right key waits)
        assert (await api(service, "GET", "/users/a/presence"))[0] == 429


async def test_the_api_is_in_the_openapi_document(service: RunningService) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            f"{service.url}/openapi.json") as response:
        document = await response.json()
    for path in ("/api/v1/users/{user}/presence", "/api/v1/presence",
                 "/api/v1/users/{user}/disconnect", "/api/v1/users/{user}/notify",
                 "/api/v1/users/{user}/calls", "/api/v1/users/{user}/calls/{call_id}/end"):
        assert path in document["paths"], path


def test_keys_are_compared_in_constant_time_over_all_of_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Which key matched (or none) is found after comparing every key, each with
    ``hmac.compare_digest`` (counted: a match on the first key still compares the second)."""
    import hmac as hmac_module

    from service.http import api as api_module

    compared: list[bytes] = []
    real = hmac_module.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac_module, "compare_digest", counting)
    keys = api_module.ApiKeys((b"a" * 32, b"b" * 32))
    assert keys.match("Bearer " + "a" * 32) == 0
    assert compared == [b"a" * 32, b"b" * 32]
    assert keys.match("Bearer " + "b" * 32) == 1
    assert keys.match("Bearer " + "a" * 32) == 0
    assert keys.match("bearer " + "a" * 32) == 0
    assert keys.match("Basic " + "a" * 32) is None
    assert keys.match(None) is None

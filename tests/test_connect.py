"""Connecting: tokens from the auth payload or a Bearer header, and every kind of refusal,
through real python-socketio clients on both transports."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
import socketio

from tests.support import SECRET, Peer, RunningService


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _signed(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256",
            headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def _now() -> int:
    return int(time.time())


async def _refusal(service: RunningService, transport: str, **connect: Any) -> Any:
    peer = Peer(service.url, transport)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await peer.connect(**connect)
    assert not peer.client.connected
    assert len(peer.refusals) == 1
    return peer.refusals[0]


async def test_token_in_auth_payload_connects(service: RunningService, transport: str) -> None:
    """A valid token in ``auth: {token}`` is accepted on both transports."""
    peer = Peer(service.url, transport)
    await peer.connect(service.token("alice"))
    assert peer.client.connected
    assert peer.client.transport() == transport
    assert await peer.call("JoinSocket", "alice") == {"ok": True}
    await peer.close()


async def test_token_in_bearer_header_connects(service: RunningService, transport: str) -> None:
    """Native clients send ``Authorization: Bearer``: accepted on both transports."""
    peer = Peer(service.url, transport)
    await peer.connect(service.token("alice"), header=True)
    assert peer.client.connected
    assert await peer.call("JoinSocket", "alice") == {"ok": True}
    await peer.close()


async def test_auth_payload_wins_over_header(service: RunningService, transport: str) -> None:
    """With both, the auth payload decides who the socket is."""
    peer = Peer(service.url, transport)
    await peer.connect(auth={"token": service.token("alice")},
                       headers={"Authorization": f"Bearer {service.token('mallory')}"})
    assert await peer.call("JoinSocket", "alice") == {"ok": True}
    assert (await peer.call("JoinSocket", "mallory"))["error"] == "forbidden"
    await peer.close()


def _forgeries() -> list[Any]:
    now = _now()
    good = {"sub": "alice", "iat": now, "exp": now + 600}
    header = _b64({"alg": "none", "typ": "JWT"})
    return [
        pytest.param({}, "token_missing", id="no-auth-at-all"),
        pytest.param({"auth": {"token": ""}}, "token_invalid", id="empty-token"),
        pytest.param({"auth": {"token": 42}}, "token_invalid", id="token-not-a-string"),
        pytest.param({"auth": {"nothing": "here"}}, "token_missing", id="auth-without-token"),
        pytest.param({"auth": "a-string"}, "token_invalid", id="auth-not-an-object"),
        pytest.param({"headers": {"Authorization": "Basic dXNlcjpwYXNz"}}, "token_missing",
                     id="basic-auth-header"),
        pytest.param({"token": "garbage"}, "token_invalid", id="garbage"),
        pytest.param({"token": "a.b.c"}, "token_invalid", id="three-garbage-segments"),
        pytest.param({"token": _signed({**good, "exp": now - 60})}, "token_expired",
                     id="expired"),
        pytest.param({"token": _signed({**good, "exp": now - 60}), "header": True},
                     "token_expired", id="expired-in-header"),
        pytest.param({"token": _signed(good, key="another-secret-that-is-also-long-enough!")},
                     "token_invalid", id="wrong-key"),
        pytest.param({"token": f"{header}.{_b64(good)}."}, "token_invalid", id="alg-none"),
        pytest.param({"token": f"{_b64({'alg': 'None'})}.{_b64(good)}."}, "token_invalid",
                     id="alg-None"),
        pytest.param({"token": _signed({"iat": now, "exp": now + 600})}, "token_invalid",
                     id="missing-sub"),
        pytest.param({"token": _signed({"sub": "alice", "iat": now})}, "token_invalid",
                     id="missing-exp"),
        pytest.param({"token": _signed({**good, "sub": ""})}, "token_invalid", id="empty-sub"),
        pytest.param({"token": _signed({**good, "sub": 42})}, "token_invalid",
                     id="numeric-sub"),
        pytest.param({"token": _signed({**good, "nbf": now + 600})}, "token_not_yet_valid",
                     id="not-yet-valid-nbf"),
        pytest.param({"token": _signed({**good, "iat": now + 600})}, "token_not_yet_valid",
                     id="issued-in-the-future"),
        pytest.param({"token": _signed(good, alg="HS512")}, "token_invalid",
                     id="algorithm-not-allowed"),
        pytest.param({"token": _signed(good) + "x"}, "token_invalid", id="tampered-signature"),
        pytest.param({"token": "x" * 9000}, "token_invalid", id="oversized"),
        # PyJWT accepts numeric strings for these; the service does not (issue 9, item 7)
        pytest.param({"token": _signed({**good, "exp": str(now + 600)})}, "token_invalid",
                     id="string-exp"),
        pytest.param({"token": _signed({**good, "iat": str(now)})}, "token_invalid",
                     id="string-iat"),
        pytest.param({"token": _signed({**good, "nbf": str(now)})}, "token_invalid",
                     id="string-nbf"),
        pytest.param({"token": _signed({**good, "exp": float(now + 600), "iat": [now]})},
                     "token_invalid", id="list-iat"),
    ]


@pytest.mark.parametrize(("connect", "reason"), _forgeries())
async def test_refusals_carry_a_stable_reason(service: RunningService, transport: str,
                                              connect: dict[str, Any], reason: str) -> None:
    """Every bad token is refused with message ``unauthorized`` and an actionable reason."""
    refusal = await _refusal(service, transport, **connect)
    assert refusal == {"message": "unauthorized", "data": {"reason": reason}}


async def test_refusal_never_echoes_the_token(service: RunningService, transport: str) -> None:
    """The refusal a client sees contains no part of the token it sent."""
    token = _signed({"sub": "alice", "exp": _now() - 60})
    refusal = await _refusal(service, transport, token=token)
    text = json.dumps(refusal)
    assert all(part not in text for part in token.split("."))


async def test_leeway_admits_small_clock_skew(service: RunningService, transport: str) -> None:
    """A token that expired within the leeway (5 s by default) still connects."""
    peer = Peer(service.url, transport)
    await peer.connect(_signed({"sub": "alice", "exp": _now() - 2}))
    assert peer.client.connected
    await peer.close()


@pytest.mark.parametrize(("claim", "value"), [("iss", "https://idp.example.com"),
                                              ("aud", "signaling")])
async def test_issuer_and_audience_are_enforced(transport: str, claim: str, value: str) -> None:
    """With an issuer or audience configured, tokens without it, or with a near miss, are
    refused; tokens that carry it connect."""
    from service.config import Secret, Settings
    from tests.support import start_service

    settings = Settings(jwt_secret=Secret(SECRET),
                        jwt_issuers=(value,) if claim == "iss" else (),
                        jwt_audiences=(value,) if claim == "aud" else ())
    running, stop = await start_service(settings)
    try:
        base = {"sub": "alice", "exp": _now() + 600}
        for wrong in ({}, {claim: value[:-1]}, {claim: value + "x"}, {claim: "other"}):
            refusal = await _refusal(running, transport, token=_signed({**base, **wrong}))
            assert refusal["data"]["reason"] == "token_invalid", wrong
        peer = Peer(running.url, transport)
        await peer.connect(_signed({**base, claim: value}))
        assert peer.client.connected
        await peer.close()
        # and the minting helper (scripts/mint_token.py) includes it for you
        peer = Peer(running.url, transport)
        await peer.connect(running.token("alice"))
        assert peer.client.connected
        await peer.close()
    finally:
        await stop()


async def test_a_bug_in_connect_refuses_promptly(service: RunningService, transport: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """If verification itself breaks (a fault injected into our own verifier), the client is
    refused with ``internal_error`` at once instead of waiting for an answer."""

    def broken(token: str) -> Any:
        raise RuntimeError("verifier bug")

    monkeypatch.setattr(service.app.ctx.signaling.verifier, "verify", broken)
    refusal = await _refusal(service, transport, token=service.token("alice"))
    assert refusal == {"message": "internal_error", "data": {"reason": "internal_error"}}


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
async def test_string_time_claims_are_invalid_everywhere(service: RunningService,
                                                         claim: str) -> None:
    """A correctly signed token whose ``exp``/``iat``/``nbf`` is a numeric string is
    ``token_invalid`` on /ice-servers too (before: 500), and counts as a failed
    authentication for the address."""
    import aiohttp

    now = _now()
    claims: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600}
    token = _signed({**claims, claim: str(claims.get(claim, now))})
    guard = service.app.ctx.signaling.guard
    before = guard._ip_failures._buckets.get("127.0.0.1")
    spent_before = before.tokens if before is not None else guard._ip_failures.rate.burst
    async with aiohttp.ClientSession() as http, http.get(
            f"{service.url}/ice-servers", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 401
        assert (await response.json())["reason"] == "token_invalid"
    refusal = await _refusal(service, "websocket", token=token)
    assert refusal["data"]["reason"] == "token_invalid"
    assert guard._ip_failures._buckets["127.0.0.1"].tokens < spent_before

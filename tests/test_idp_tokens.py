"""Tokens from identity providers: JWKS (served by a real HTTP server), PEM keys, secret
rotation, a forgery corpus, key rotation at the IdP, and a slow or dead IdP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from service.auth.minting import sign
from service.config import JwksEndpoint, Rate, Secret, Settings
from tests.idp import IdpKey, JwksServer
from tests.support import SECRET, Peer, RunningService, eventually, offer_to, refusal, serving

ISS_A = "https://idp-a.example.com/"
ISS_B = "https://idp-b.example.com/"
ISS_OWN = "https://signaling.example.com/"
AUD = "signaling"


@dataclass
class Keys:
    a: IdpKey
    a2: IdpKey
    b: IdpKey
    ed: IdpKey
    evil: IdpKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(a=IdpKey.new("RS256", "a-1"), a2=IdpKey.new("RS256", "a-2"),
                b=IdpKey.new("ES256", "b-1"), ed=IdpKey.new("EdDSA", "ed-1"),
                evil=IdpKey.new("RS256", "evil-1"))


@pytest.fixture
async def idp() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    yield server
    await server.stop()


def idp_settings(idp: JwksServer, keys: Keys, **overrides: Any) -> Settings:
    """Two IdPs with JWKS (A: RS256, B: ES256) and the service's own HS secret and EdDSA PEM."""
    fields: dict[str, Any] = {
        "jwt_secret": Secret(SECRET),
        "jwt_public_keys": (keys.ed.pem,),
        "jwt_jwks": (JwksEndpoint(ISS_A, idp.publish("a", keys.a)),
                     JwksEndpoint(ISS_B, idp.publish("b", keys.b))),
        "jwt_issuers": (ISS_A, ISS_B, ISS_OWN),
        # one namespace of user ids across the three (tests/test_issuer_ids.py: prefixes)
        "jwt_shared_user_ids": True,
        "jwt_audiences": (AUD,),
        "jwt_max_lifetime": 3600,
        # ES384 is allowed, so that an ES384 header on a P-256 key meets the key-type check
        "jwt_algorithms": ("HS256", "RS256", "ES256", "ES384", "EdDSA"),
        # room for the 100 KB token to reach the verifier (by default a message that big is
        # refused by the transport first: tests/test_hostile.py)
        "max_message_bytes": 262144,
        # a forgery corpus run would otherwise spend the address's failure budget
        "limit_ip_auth_failures": Rate(0, 0),
        "limit_ip_connects": Rate(0, 0),
        **overrides,
    }
    return Settings(**fields)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _claims(iss: str = ISS_A, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iss": iss, "aud": AUD, "iat": now, "exp": now + 600, **extra}


def _hs256_with(key: bytes, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """HS256 computed by hand (PyJWT refuses PEM-looking HMAC keys), as an attacker would."""
    signing_input = _segments({"alg": "HS256", "typ": "JWT", **(header or {})}, _claims(**claims))
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _unsigned(alg: str) -> str:
    return _segments({"alg": alg, "typ": "JWT"}, _claims()) + "."


def _tampered(token: str) -> str:
    header, _, rest = token.partition(".")
    _, _, signature = rest.partition(".")
    return f"{header}.{_b64(json.dumps(_claims(sub='mallory')).encode())}.{signature}"


Forge = Callable[[Keys, JwksServer], str]
FORGERIES: dict[str, tuple[Forge, str]] = {
    "alg-none": (lambda k, i: _unsigned("none"), "token_invalid"),
    "alg-None": (lambda k, i: _unsigned("None"), "token_invalid"),
    "alg-NONE": (lambda k, i: _unsigned("NONE"), "token_invalid"),
    "alg-nOnE": (lambda k, i: _unsigned("nOnE"), "token_invalid"),
    "hs256-with-public-key-pem": (
        lambda k, i: _hs256_with(k.a.pem.encode(), {"kid": "a-1"}), "token_invalid"),
    "hs256-with-public-jwk": (
        lambda k, i: _hs256_with(json.dumps(k.a.jwk).encode(), {"kid": "a-1"}),
        "token_invalid"),
    "hs256-with-own-pem-as-secret": (
        lambda k, i: _hs256_with(k.ed.pem.encode(), iss=ISS_OWN), "token_invalid"),
    "wrong-issuer": (lambda k, i: k.a.token(iss="https://evil.example.com/", aud=AUD),
                     "token_invalid"),
    "issuer-prefix": (lambda k, i: k.a.token(iss=ISS_A[:-1], aud=AUD), "token_invalid"),
    "issuer-substring": (lambda k, i: k.a.token(iss="idp-a.example.com", aud=AUD),
                         "token_invalid"),
    "issuer-superstring": (lambda k, i: k.a.token(iss=ISS_A + "x", aud=AUD), "token_invalid"),
    "no-issuer": (lambda k, i: k.a.token(aud=AUD), "token_invalid"),
    "wrong-audience": (lambda k, i: k.a.token(iss=ISS_A, aud="billing"), "token_invalid"),
    "audience-prefix": (lambda k, i: k.a.token(iss=ISS_A, aud="signal"), "token_invalid"),
    "no-audience": (lambda k, i: k.a.token(iss=ISS_A), "token_invalid"),
    "expired": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, ttl=-60), "token_expired"),
    "not-yet-valid": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, nbf=int(time.time()) + 600),
                      "token_not_yet_valid"),
    "lifetime-over-cap": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, ttl=7200),
                          "token_invalid"),
    "lifetime-over-cap-without-iat": (
        lambda k, i: sign({"sub": "alice", "iss": ISS_A, "aud": AUD,
                           "exp": int(time.time()) + 7200}, k.a.key, "RS256", kid="a-1"),
        "token_invalid"),
    "kid-not-in-jwks": (lambda k, i: k.a2.token(iss=ISS_A, aud=AUD), "token_invalid"),
    "kid-path-traversal": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, kid="../a-1"),
                           "token_invalid"),
    "kid-path-absolute": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, kid="/etc/passwd"),
                          "token_invalid"),
    "kid-with-nul": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, kid="a-1\x00"), "token_invalid"),
    "kid-sql": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, kid="a-1' OR '1'='1"),
                "token_invalid"),
    "kid-not-a-string": (
        lambda k, i: _segments({"alg": "RS256", "kid": 1}, _claims()) + ".c2ln", "token_invalid"),
    "jku-elsewhere": (lambda k, i: k.evil.token(iss=ISS_A, aud=AUD, headers={
        "jku": i.publish("evil", k.evil)}), "token_invalid"),
    "x5u-elsewhere": (lambda k, i: k.evil.token(iss=ISS_A, aud=AUD, headers={
        "x5u": i.publish("evil", k.evil)}), "token_invalid"),
    "embedded-jwk": (lambda k, i: k.evil.token(iss=ISS_A, aud=AUD, headers={"jwk": k.evil.jwk}),
                     "token_invalid"),
    "crit-header": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, headers={"crit": ["exp"]}),
                    "token_invalid"),
    "tampered-payload": (lambda k, i: _tampered(k.a.token(iss=ISS_A, aud=AUD)),
                         "token_invalid"),
    "truncated": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD)[:-10], "token_invalid"),
    "100-kb": (lambda k, i: "eyJhbGciOiJSUzI1NiJ9." + "A" * 100_000 + ".sig", "token_invalid"),
    "issuer-a-signed-by-issuer-b-key": (
        lambda k, i: sign(_claims(), k.b.key, "ES256", kid="b-1"), "token_invalid"),
    "issuer-a-signed-by-b-key-under-a-kid": (
        lambda k, i: sign(_claims(), k.b.key, "ES256", kid="a-1"), "token_invalid"),
    "jwks-issuer-signed-with-static-secret": (
        lambda k, i: sign(_claims(iss=ISS_B), SECRET, "HS256"), "token_invalid"),
    "jwks-issuer-signed-with-static-pem-key": (
        lambda k, i: sign(_claims(iss=ISS_B), k.ed.key, "EdDSA"), "token_invalid"),
    "algorithm-not-allowed": (lambda k, i: sign(_claims(), k.a.key, "RS512", kid="a-1"),
                              "token_invalid"),
    "es384-header-on-p256-key": (
        lambda k, i: _segments({"alg": "ES384", "kid": "b-1"}, _claims(iss=ISS_B)) + ".c2ln",
        "token_invalid"),
    "revoked-jti": (lambda k, i: k.a.token(iss=ISS_A, aud=AUD, jti="revoked-1"),
                    "token_revoked"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
async def test_forgery_is_refused_with_the_right_reason(name: str, keys: Keys, idp: JwksServer,
                                                        tmp_path: Path, transport: str) -> None:
    """Each forged or out-of-policy token is refused, with the reason a client acts on, and no
    URL from a token header is ever fetched."""
    denylist = tmp_path / "revoked.txt"
    denylist.write_text("# revoked by support\nrevoked-1\n")
    async with serving(idp_settings(idp, keys, jwt_denylist_file=denylist)) as service:
        forge, reason = FORGERIES[name]
        token = forge(keys, idp)
        data = await refusal(service.url, transport, token=token)
        assert data == {"message": "unauthorized", "data": {"reason": reason}}
        assert idp.hits["evil"] == 0


@pytest.mark.parametrize("key_name", ["a", "b"])
async def test_jwks_tokens_connect(key_name: str, keys: Keys, idp: JwksServer,
                                   transport: str) -> None:
    """RS256 (issuer A) and ES256 (issuer B) tokens verified through each issuer's JWKS."""
    key, iss = (keys.a, ISS_A) if key_name == "a" else (keys.b, ISS_B)
    async with serving(idp_settings(idp, keys)) as service:
        peer = Peer(service.url, transport)
        await peer.connect(key.token("alice", iss=iss, aud=AUD))
        assert await peer.call("JoinSocket", "alice") == {"ok": True}
        await peer.close()


async def test_jwks_only_configuration_needs_no_secret(keys: Keys, idp: JwksServer,
                                                       transport: str) -> None:
    """With only a JWKS URL, IdP tokens connect and HS256 tokens have no key at all."""
    settings = Settings(jwt_jwks=(JwksEndpoint(ISS_A, idp.publish("a", keys.a)),),
                        jwt_issuers=(ISS_A,))
    async with serving(settings) as service:
        peer = Peer(service.url, transport)
        await peer.connect(keys.a.token(iss=ISS_A))
        assert peer.client.connected
        await peer.close()
        hs = sign(_claims(), SECRET, "HS256")
        assert (await refusal(service.url, transport, token=hs))["data"]["reason"] == \
            "token_invalid"


async def test_pem_keys_inline_and_from_a_file(keys: Keys, tmp_path: Path,
                                               transport: str) -> None:
    """SIGNAL_JWT_PUBLIC_KEY takes inline PEM or a file holding several keys (rotation); each
    key verifies its own tokens, with no HS secret configured."""
    pem_file = tmp_path / "keys.pem"
    pem_file.write_text(keys.ed.pem + keys.a.pem)
    inline = keys.b.pem.replace("\n", "\\n")
    settings = Settings.from_env({"SIGNAL_JWT_PUBLIC_KEY": str(pem_file)}, env_file=None)
    async with serving(settings) as service:
        for key in (keys.ed, keys.a):
            peer = Peer(service.url, transport)
            await peer.connect(key.token())
            assert peer.client.connected
            await peer.close()
        data = await refusal(service.url, transport, token=keys.b.token())
        assert data["data"]["reason"] == "token_invalid"
    settings = Settings.from_env({"SIGNAL_JWT_PUBLIC_KEY": inline}, env_file=None)
    async with serving(settings) as service:
        peer = Peer(service.url, transport)
        await peer.connect(keys.b.token())
        assert peer.client.connected
        await peer.close()


async def test_secret_rotation_accepts_both_eras(transport: str) -> None:
    """Tokens signed with the current or the previous secret connect; any other secret, or the
    previous one once it is removed, is refused."""
    old, new, other = ("old-" + "o" * 40), ("new-" + "n" * 40), ("other-" + "x" * 40)
    rotating = Settings(jwt_secret=Secret(new), jwt_previous_secret=Secret(old))
    async with serving(rotating) as service:
        for secret in (new, old):
            peer = Peer(service.url, transport)
            await peer.connect(sign(_claims(iss=ISS_OWN), secret, "HS256"))
            assert peer.client.connected
            await peer.close()
        data = await refusal(service.url, transport,
                             token=sign(_claims(iss=ISS_OWN), other, "HS256"))
        assert data["data"]["reason"] == "token_invalid"
    async with serving(Settings(jwt_secret=Secret(new))) as service:
        data = await refusal(service.url, transport, token=sign(_claims(iss=ISS_OWN), old,
                                                                "HS256"))
        assert data["data"]["reason"] == "token_invalid"


async def test_idp_key_rotation(keys: Keys, idp: JwksServer) -> None:
    """The IdP adds a key: its tokens connect (one refresh on the unknown kid). The IdP drops
    the old key: once the cache expires, old tokens are refused and new ones still connect."""
    settings = idp_settings(idp, keys, jwks_cache_ttl=1, jwks_refresh_interval=1)
    async with serving(settings) as service:
        old = keys.a.token(iss=ISS_A, aud=AUD)
        new = keys.a2.token(iss=ISS_A, aud=AUD)

        async def connects(token: str) -> bool:
            peer = Peer(service.url, "websocket")
            try:
                await peer.connect(token)
            except socketio.exceptions.ConnectionError:
                return False
            await peer.close()
            return True

        assert await connects(old)
        assert not await connects(new)          # a-2 not published yet
        idp.publish("a", keys.a, keys.a2)         # the IdP adds a-2 ...
        await asyncio.sleep(1.1)                  # ... and the refresh interval passes
        fetches = idp.hits["a"]
        assert await connects(new)
        assert idp.hits["a"] == fetches + 1       # exactly one refresh for the unknown kid
        assert await connects(old)
        idp.publish("a", keys.a2)                 # the IdP retires a-1
        await asyncio.sleep(1.1)                  # the cached set expires
        assert not await connects(old)
        assert await connects(new)


async def test_unknown_kids_cannot_make_the_service_hammer_the_idp(keys: Keys,
                                                                   idp: JwksServer) -> None:
    """Fifty tokens with random unknown kids cause at most one JWKS fetch per refresh
    interval (here: none beyond the start-up fetch)."""
    async with serving(idp_settings(idp, keys, jwks_refresh_interval=60)) as service:
        peer = Peer(service.url, "websocket")
        await peer.connect(keys.a.token(iss=ISS_A, aud=AUD))  # the cache is warm
        await peer.close()
        before = idp.hits["a"]
        tokens = [keys.evil.token(iss=ISS_A, aud=AUD, kid=f"random-{n}") for n in range(50)]
        results = await asyncio.gather(*(refusal(service.url, "websocket", token=t)
                                         for t in tokens))
        assert all(r["data"]["reason"] == "token_invalid" for r in results)
        assert idp.hits["a"] - before <= 1


async def test_a_slow_idp_does_not_stall_other_clients(keys: Keys, idp: JwksServer) -> None:
    """While issuer A's JWKS takes 2 s to answer, an HS256 client connects and relays at once;
    A's client then connects when the keys arrive."""
    idp.delay = 2.0
    async with serving(idp_settings(idp, keys)) as service:
        idp_client = Peer(service.url, "websocket")
        pending = asyncio.ensure_future(idp_client.connect(keys.a.token(iss=ISS_A, aud=AUD)))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        other = Peer(service.url, "websocket")
        await other.connect(service.token("bob", iss=ISS_OWN, aud=AUD))
        ack = await other.call("offer", offer_to("carol"))
        assert (ack["ok"], ack["delivered"]) == (True, False)
        assert time.monotonic() - started < 1.0
        assert not pending.done()
        await pending
        assert idp_client.client.connected
        await idp_client.close()
        await other.close()


async def test_a_dead_idp_is_given_up_on_after_the_timeout(keys: Keys, idp: JwksServer) -> None:
    """An IdP that never answers in time refuses its tokens after SIGNAL_JWKS_TIMEOUT, as
    retryable (``unavailable``: the token may well be good; issue 19 item 10 made it so,
    it was ``token_invalid``), and keeps no one else waiting."""
    idp.delay = 5.0
    async with serving(idp_settings(idp, keys, jwks_timeout=1.0)) as service:
        started = time.monotonic()
        data = await refusal(service.url, "websocket", token=keys.a.token(iss=ISS_A, aud=AUD))
        assert data["data"]["reason"] == "unavailable"
        assert time.monotonic() - started < 4.0  # timeout 1 s; the IdP answers after 5 s


async def test_keys_survive_an_idp_outage(keys: Keys, idp: JwksServer) -> None:
    """When a refresh fails (IdP down), the keys already fetched keep working."""
    async with serving(idp_settings(idp, keys, jwks_cache_ttl=1, jwks_refresh_interval=1)) as svc:
        token = keys.a.token(iss=ISS_A, aud=AUD)
        peer = Peer(svc.url, "websocket")
        await peer.connect(token)
        await peer.close()
        idp.status = 503
        await asyncio.sleep(1.1)
        fetches = idp.hits["a"]
        peer = Peer(svc.url, "websocket")
        await peer.connect(token)
        assert peer.client.connected
        assert idp.hits["a"] == fetches + 1  # it did try
        await peer.close()
        # and /metrics counts each fetch (B's prefetch may have met the outage too)
        async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/metrics") as r:
            counted = {s.labels["result"]: s.value
                       for f in text_string_to_metric_families(await r.text())
                       for s in f.samples if s.name == "signaling_jwks_fetches_total"}
        assert counted["ok"] + counted["failed"] == idp.hits["a"] + idp.hits["b"]
        assert counted["ok"] >= 1 and counted["failed"] >= 1


async def test_custom_user_claim(keys: Keys, idp: JwksServer, transport: str) -> None:
    """SIGNAL_JWT_USER_CLAIM names where the user id lives; ``sub`` is then not required."""
    settings = Settings(jwt_jwks=(JwksEndpoint(ISS_A, idp.publish("a", keys.a)),),
                        jwt_issuers=(ISS_A,), jwt_user_claim="uid")
    async with serving(settings) as service:
        now = int(time.time())
        token = sign({"uid": "u-42", "iss": ISS_A, "iat": now, "exp": now + 60}, keys.a.key,
                     "RS256", kid="a-1")
        peer = Peer(service.url, transport)
        await peer.connect(token)
        assert await peer.call("JoinSocket", "u-42") == {"ok": True}
        await peer.close()
        data = await refusal(service.url, transport, token=keys.a.token(iss=ISS_A))
        assert data["data"]["reason"] == "token_invalid"  # sub only, no uid


@pytest.mark.parametrize("env", [
    {"SIGNAL_JWT_JWKS_URL": "https://idp.example.com/jwks.json"},
    {"SIGNAL_JWT_JWKS_URL": "https://idp.example.com/jwks.json",
     "SIGNAL_JWT_ISSUER": "https://a.example.com/,https://b.example.com/"},
    {"SIGNAL_JWT_JWKS_URL": "http://idp.example.com/jwks.json", "SIGNAL_JWT_ISSUER": "x"},
    {"SIGNAL_JWT_JWKS_URL": "https://c.example.com/ https://c.example.com/jwks.json",
     "SIGNAL_JWT_ISSUER": "https://a.example.com/"},
    {"SIGNAL_JWT_PUBLIC_KEY": "-----BEGIN PRIVATE KEY-----\\nMIIB\\n-----END PRIVATE KEY-----"},
    {"SIGNAL_JWT_PUBLIC_KEY": "/no/such/file.pem"},
    {"SIGNAL_JWT_PREVIOUS_SECRET": "p" * 40},
    {"SIGNAL_JWT_SECRET": "s" * 40, "SIGNAL_JWT_ALGORITHMS": "HS256,none"},
    {"SIGNAL_JWT_SECRET": "s" * 40, "SIGNAL_JWT_ALGORITHMS": "hs256"},
])
def test_key_configuration_mistakes_stop_startup(env: dict[str, str]) -> None:
    """Bare JWKS URLs without exactly one issuer, plain-http IdPs, JWKS issuers not accepted,
    private keys, missing files, a previous secret alone, and unknown algorithms (``none``
    included) are configuration errors."""
    from service.errors import ConfigError

    with pytest.raises(ConfigError):
        Settings.from_env(env, env_file=None)


def test_jwks_entries_parse() -> None:
    """``URL`` binds to the single issuer; ``ISSUER URL`` entries bind explicitly."""
    one = Settings.from_env({"SIGNAL_JWT_ISSUER": ISS_A,
                             "SIGNAL_JWT_JWKS_URL": "https://idp-a.example.com/jwks"},
                            env_file=None)
    assert one.jwt_jwks == (JwksEndpoint(ISS_A, "https://idp-a.example.com/jwks"),)
    two = Settings.from_env({"SIGNAL_JWT_JWKS_URL": f"{ISS_A} http://127.0.0.1:9/a.json, "
                                                    f"{ISS_B} https://b.example.com/k",
                             "SIGNAL_JWT_USER_IDS": "shared"},
                            env_file=None)
    assert [e.issuer for e in two.jwt_jwks] == [ISS_A, ISS_B]
    assert two.jwt_secret is None


async def test_running_service_fixture_still_uses_hs256(service: RunningService) -> None:
    """The default test service (a secret only) accepts its own HS256 tokens."""
    peer = Peer(service.url, "websocket")
    await peer.connect(service.token("alice"))
    assert peer.client.connected
    await peer.close()


async def test_a_service_started_before_its_idp_catches_up(keys: Keys, idp: JwksServer
                                                            ) -> None:
    """The IdP answers 503 when the service starts: its tokens are refused as retryable
    (``unavailable``, never ``token_invalid``, which tells an app to log the user out),
    /readyz says not ready (``jwks_unavailable``); the IdP comes up, the failed fetch is
    tried again within a backoff (not the 30 s refresh interval), and the same token
    connects (before: token_invalid for 30 s)."""
    idp.status = 503
    async with serving(idp_settings(idp, keys)) as service:
        verifier = service.app.ctx.signaling.verifier
        source = verifier.jwks[ISS_A]
        await eventually(lambda: source.failing, 5)
        token = keys.a.token(iss=ISS_A, aud=AUD)
        data = await refusal(service.url, "websocket", token=token)
        assert data == {"message": "unavailable", "data": {"reason": "unavailable"}}
        own = Peer(service.url, "websocket")  # the service's own tokens work meanwhile
        await own.connect(service.token("alice", iss=ISS_OWN, aud=AUD))
        assert await own.call("RefreshToken", token) == {"ok": False, "error": "unavailable"}
        await own.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{service.url}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["reason"] == "jwks_unavailable"
            async with http.get(f"{service.url}/ice-servers",
                                headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 503
                assert await response.json() == {"error": "unavailable",
                                                 "reason": "unavailable"}
            idp.status = 200
            await eventually(lambda: verifier.keys_ready, 5)  # backoff 0.5 s, 1 s, 2 s ...
            async with http.get(f"{service.url}/readyz") as response:
                assert response.status == 200
        peer = Peer(service.url, "websocket")
        await peer.connect(token)
        assert peer.client.connected
        await peer.close()


async def test_an_unknown_kid_whose_fetch_failed_is_retryable(keys: Keys, idp: JwksServer
                                                               ) -> None:
    """The IdP rotated to a key the service has not seen, and is down when a token of the
    new key arrives: ``unavailable`` (retry), not ``token_invalid``; a kid the IdP's set
    does not have while the IdP answers is ``token_invalid``."""
    async with serving(idp_settings(idp, keys, jwks_refresh_interval=1)) as service:
        source = service.app.ctx.signaling.verifier.jwks[ISS_A]
        await eventually(lambda: source.loaded, 5)
        await eventually(lambda: source.retry_in() == 0, 5)
        unknown = keys.evil.token(iss=ISS_A, aud=AUD, kid="a-9")
        assert (await refusal(service.url, "websocket", token=unknown))["data"] == {
            "reason": "token_invalid"}
        idp.status = 503
        await eventually(lambda: source.retry_in() == 0, 5)
        assert (await refusal(service.url, "websocket", token=unknown))["data"] == {
            "reason": "unavailable"}


@pytest.mark.parametrize("how", ["in two parts", "through a redirect"])
async def test_a_jwks_arrives_however_it_is_sent(keys: Keys, idp: JwksServer, how: str) -> None:
    """A JWKS whose body arrives in two reads (a large set over TLS), or whose URL redirects
    (some IdPs move theirs), loads, and its tokens connect."""
    idp.split = how == "in two parts"
    url = idp.publish("a", keys.a)
    if how == "through a redirect":
        url = url.replace("/a.json", "/moved/a.json")
    settings = Settings(jwt_jwks=(JwksEndpoint(ISS_A, url),), jwt_issuers=(ISS_A,),
                        jwt_audiences=(AUD,))
    async with serving(settings) as service:
        verifier = service.app.ctx.signaling.verifier
        await eventually(lambda: verifier.keys_ready, 5)
        peer = Peer(service.url, "websocket")
        await peer.connect(keys.a.token(iss=ISS_A, aud=AUD))
        assert peer.client.connected
        await peer.close()

"""HTTP surface: health, and browser origins on the Socket.IO endpoint."""

from __future__ import annotations

import pytest
import socketio

from service.config import Secret, Settings
from service.factory import create_app
from tests.support import SECRET, Peer, start_service

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


@pytest.fixture
def app_with_origins() -> object:
    settings = Settings(jwt_secret=Secret(SECRET), cors_origins=("https://app.example.com",))
    return create_app(settings, name="signaling_http_origins")


async def test_healthz(settings: Settings) -> None:
    """``GET /healthz`` answers 200 JSON with the version."""
    app = create_app(settings, name="signaling_http_health")
    _, response = await app.asgi_client.get("/healthz")
    assert response.status == 200
    assert response.json["status"] == "ok"
    assert response.json["version"]


async def test_allowed_origin_gets_cors_headers(app_with_origins: object) -> None:
    """A configured browser origin may open a polling session and is told so."""
    _, response = await app_with_origins.asgi_client.get(  # type: ignore[attr-defined]
        HANDSHAKE, headers={"Origin": "https://app.example.com"})
    assert response.status == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"


@pytest.mark.parametrize("origin", ["https://evil.example.com", "https://app.example.com.evil.io",
                                    "http://app.example.com", "null"])
async def test_other_origins_are_refused_on_polling(app_with_origins: object, origin: str) -> None:
    """Any other Origin, including look-alikes, gets 400 and no session."""
    _, response = await app_with_origins.asgi_client.get(  # type: ignore[attr-defined]
        HANDSHAKE, headers={"Origin": origin})
    assert response.status == 400
    assert "access-control-allow-origin" not in response.headers


async def test_no_cross_origin_by_default(settings: Settings) -> None:
    """With no origins configured, only the service's own origin is accepted."""
    app = create_app(settings, name="signaling_http_default_origins")
    _, response = await app.asgi_client.get(HANDSHAKE, headers={"Origin": "https://app.example.com"})
    assert response.status == 400


async def test_native_clients_send_no_origin(settings: Settings) -> None:
    """Without an Origin header (mobile apps, servers) the handshake is allowed."""
    app = create_app(settings, name="signaling_http_no_origin")
    _, response = await app.asgi_client.get(HANDSHAKE)
    assert response.status == 200


@pytest.mark.parametrize("origin", ["https://evil.example.com", "https://app.example.com"])
async def test_origin_is_checked_on_websocket_too(transport: str, origin: str) -> None:
    """A real client sending a foreign Origin cannot connect on either transport; the allowed
    origin can."""
    settings = Settings(jwt_secret=Secret(SECRET), cors_origins=("https://app.example.com",))
    running, stop = await start_service(settings)
    try:
        peer = Peer(running.url, transport)
        if origin == "https://app.example.com":
            await peer.connect(running.token("alice"), headers={"Origin": origin})
            assert peer.client.connected
            await peer.close()
        else:
            with pytest.raises(socketio.exceptions.ConnectionError):
                await peer.connect(running.token("alice"), headers={"Origin": origin})
            assert not peer.client.connected
    finally:
        await stop()


async def test_ice_servers_share_the_socket_auth_failure_budget() -> None:
    """Bad tokens at /ice-servers spend the address's authentication budget (then 429, even
    for a valid token), and an address out of budget there cannot connect over Socket.IO
    either, nor the other way round (issue 10, item 4)."""
    import aiohttp

    from service.config import Rate, Secret
    from tests.support import SECRET, refusal, serving

    settings = Settings(jwt_secret=Secret(SECRET), limit_ip_auth_failures=Rate(0.01, 3),
                        limit_ip_connects=Rate(0, 0))
    async with serving(settings) as service, aiohttp.ClientSession() as http:
        url = f"{service.url}/ice-servers"

        async def status(token: str) -> int:
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                return response.status

        assert [await status("bad") for _ in range(4)] == [401, 401, 401, 429]
        assert await status(service.token("alice")) == 429
        handshake = f"{service.url}/socket.io/?EIO=4&transport=polling"
        async with http.get(handshake) as response:  # out of failures: no session at all
            assert (response.status, await response.json()) == (401, "rate_limited")
    async with serving(settings) as service, aiohttp.ClientSession() as http:
        for _ in range(3):
            await refusal(service.url, "polling", token="bad")
        async with http.get(f"{service.url}/ice-servers",
                            headers={"Authorization": f"Bearer {service.token('a')}"}) as r:
            assert r.status == 429


async def test_jsonp_and_no_cors_handshakes_are_refused_unspent() -> None:
    """JSONP polling (``j=``) and handshakes a browser marks ``Sec-Fetch-Mode: no-cors``
    (``<img>``/``<script>`` tags on any page) are refused and spend nothing of the address's
    session budget; the app's own handshakes still go through (issue 10, item 5)."""
    import aiohttp

    from service.config import Rate, Secret
    from tests.support import SECRET, serving

    settings = Settings(jwt_secret=Secret(SECRET), limit_ip_connects=Rate(0.01, 2))
    async with serving(settings) as service, aiohttp.ClientSession() as http:
        base = f"{service.url}/socket.io/?EIO=4&transport=polling"
        for _ in range(5):
            async with http.get(base, headers={"Sec-Fetch-Mode": "no-cors",
                                               "Sec-Fetch-Dest": "image"}) as response:
                assert response.status == 403
            async with http.get(f"{base}&j=0") as response:
                assert response.status == 400
        for mode in ("cors", None):  # a browser app's XHR, a native client
            headers = {"Sec-Fetch-Mode": mode} if mode else {}
            async with http.get(base, headers=headers) as response:
                assert response.status == 200
                assert (await response.text()).startswith("0{")

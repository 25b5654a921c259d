"""Real calls in a real browser: two Chromium pages on the demo page call each other through
the service; media flows; hangup, refusals and an offline peer are shown in plain words."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page

from service.config import Rate, Secret, Settings
from tests.browser import ARTIFACTS, chromium, open_demo, state, wait_state
from tests.support import SECRET, RunningService, serving

CALLS = 10


def demo_settings(**extra: Any) -> Settings:
    return Settings(jwt_secret=Secret(SECRET), demo=True, demo_tokens=True,
                    limit_ip_connects=Rate(0, 0), **extra)


@pytest.fixture
async def demo_service() -> AsyncIterator[RunningService]:
    async with serving(demo_settings()) as service:
        yield service


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def _call(caller: Page, callee: Page, peer: str) -> int:
    """Place a call and wait until both peer connections are connected; the setup time (ms,
    from the offer to ``connected`` on the caller)."""
    await caller.fill("#peer", peer)
    await caller.click("#call")
    await wait_state(caller, "pc", "connected")
    await wait_state(callee, "pc", "connected")
    timing: dict[str, Any] = await caller.evaluate("window.demo.timings.at(-1)")
    return int(timing["setupMs"])


async def _frames(page: Page, at_least: int = 1, within: float = 10) -> int:
    """Video frames decoded from the peer, waiting (polling getStats) for ``at_least``."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        frames: int = await page.evaluate("window.demo.inboundVideoFrames()")
        if frames >= at_least or asyncio.get_running_loop().time() > deadline:
            return frames
        await asyncio.sleep(0.2)


async def test_two_browsers_call_each_other(demo_service: RunningService,
                                            browser: Browser) -> None:
    """alice calls bob: both RTCPeerConnections reach ``connected``, video frames are decoded
    on both sides, and alice's hangup ends bob's call. The connected call is kept as
    artifacts/demo-call.png."""
    alice = await open_demo(browser, demo_service.url, "alice")
    bob = await open_demo(browser, demo_service.url, "bob", auto_answer=True)
    await wait_state(alice, "signaling", "connected")
    await wait_state(bob, "signaling", "connected")
    await _call(alice, bob, "bob")
    assert await _frames(alice, 10) >= 10
    assert await _frames(bob, 10) >= 10
    ARTIFACTS.mkdir(exist_ok=True)
    await alice.screenshot(path=str(ARTIFACTS / "demo-call.png"), full_page=True)
    await alice.click("#hangup")
    await bob.wait_for_function("window.demo.state.ended === 'alice hung up.'")
    assert (await state(bob))["call"] == "idle"
    assert (await state(alice))["call"] == "idle"
    assert await alice.locator("#status").inner_text() == "You hung up."
    assert alice.errors == [] and bob.errors == []  # type: ignore[attr-defined]


async def test_repeated_calls_all_connect(demo_service: RunningService,
                                          browser: Browser) -> None:
    """Ten calls in a row between the same two pages all connect; the setup times (offer to
    connected) are recorded in artifacts/calls-browser.json."""
    alice = await open_demo(browser, demo_service.url, "alice")
    bob = await open_demo(browser, demo_service.url, "bob", auto_answer=True)
    await wait_state(alice, "signaling", "connected")
    await wait_state(bob, "signaling", "connected")
    setups = []
    for _ in range(CALLS):
        setups.append(await _call(alice, bob, "bob"))
        await alice.click("#hangup")
        await wait_state(bob, "call", "idle")
        await wait_state(alice, "call", "idle")
    record = {"stack": "chromium-chromium", "calls": CALLS, "connected": len(setups),
              "setup_ms": setups, "setup_ms_median": sorted(setups)[len(setups) // 2]}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "calls-browser.json").write_text(json.dumps(record) + "\n")
    print(record)
    assert len(setups) == CALLS


async def test_bad_token_is_refused_in_plain_words(demo_service: RunningService,
                                                   browser: Browser) -> None:
    """A page with a forged token sees the refusal reason and a sentence a person can act on."""
    page = await open_demo(browser, demo_service.url, token="not-a-token")
    await wait_state(page, "signaling", "refused")
    assert (await state(page))["refusal"] == "token_invalid"
    assert "The token is invalid" in await page.locator("#status").inner_text()
    expired = demo_service.token("carol", ttl=-60)
    page = await open_demo(browser, demo_service.url, token=expired)
    await wait_state(page, "signaling", "refused")
    assert "The token has expired" in await page.locator("#status").inner_text()


async def test_calling_someone_offline(demo_service: RunningService, browser: Browser) -> None:
    """A call to a user nobody is signed in as rings on ('is not online'): the offer is held
    for them until the ring timeout; hanging up ends it."""
    page = await open_demo(browser, demo_service.url, "alice")
    await wait_state(page, "signaling", "connected")
    await page.fill("#peer", "nobody")
    await page.click("#call")
    await wait_state(page, "call", "calling nobody (offline)")
    assert "nobody is not online" in await page.locator("#status").inner_text()
    await page.click("#hangup")
    await wait_state(page, "call", "idle")


async def test_rate_limited_call_is_explained(browser: Browser) -> None:
    """When the relay limit refuses the offer, the page says to slow down."""
    async with serving(demo_settings(limit_relays=Rate(0.001, 1))) as service:
        alice = await open_demo(browser, service.url, "alice")
        bob = await open_demo(browser, service.url, "bob")
        await wait_state(alice, "signaling", "connected")
        await wait_state(bob, "signaling", "connected")
        await alice.evaluate("window.demo.socket.emit('hangup', {to: 'bob'})")  # spend it
        await alice.fill("#peer", "bob")
        await alice.click("#call")
        await alice.wait_for_function("(window.demo.state.ended || '').includes('Slow down')")


async def test_demo_page_runs_under_its_csp(demo_service: RunningService,
                                            browser: Browser) -> None:
    """Without bypassing the page's Content-Security-Policy, the page and the vendored
    socket.io-client load and run, and the browser reports no violation."""
    context = await browser.new_context()
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = await page.goto(f"{demo_service.url}/demo")
    assert response is not None and response.url.endswith("/demo/")
    assert "default-src 'self'" in (await response.all_headers())["content-security-policy"]
    await page.locator("#dev-token").wait_for(state="visible")  # demo.js ran, config loaded
    await page.fill("#dev-user", "dora")
    await page.click("#get-token")
    await page.click("#connect")
    await page.locator("#signaling").filter(has_text="connected").wait_for()
    assert problems == []
    # connect-src is the page's own origin: a websocket to another host is refused by the
    # browser before it connects (127.0.0.2: another origin, still this machine)
    blocked = await page.evaluate("""() => new Promise(resolve => {
        document.addEventListener('securitypolicyviolation',
                                  e => resolve(e.effectiveDirective), {once: true});
        const ws = new WebSocket('ws://127.0.0.2:9/socket.io/');
        ws.onerror = () => setTimeout(() => resolve('no violation: it tried'), 1000);
    })""")
    assert blocked == "connect-src"
    await context.close()


async def test_demo_is_off_by_default_and_tokens_need_the_switch() -> None:
    """Production settings serve no demo; with the demo on but dev tokens off, the token
    endpoint does not exist; the ICE server list needs a valid token."""
    ice = [{"urls": "stun:stun.example.com:3478"}]
    production = Settings(jwt_secret=Secret(SECRET), ice_servers=tuple(ice))
    async with serving(production) as service, aiohttp.ClientSession() as http:
        async with http.get(f"{service.url}/demo/") as response:
            assert response.status == 404
        async with http.get(f"{service.url}/ice-servers") as response:
            assert response.status == 401
            assert (await response.json())["reason"] == "token_missing"
        headers = {"Authorization": f"Bearer {service.token('alice')}"}
        async with http.get(f"{service.url}/ice-servers", headers=headers) as response:
            assert response.status == 200
            assert await response.json() == {"iceServers": ice}
    demo_only = Settings(jwt_secret=Secret(SECRET), demo=True)
    async with serving(demo_only) as service, aiohttp.ClientSession() as http:
        async with http.get(f"{service.url}/demo/") as response:
            assert response.status == 200
        async with http.get(f"{service.url}/demo/token?user=x") as response:
            assert response.status == 404
        async with http.get(f"{service.url}/demo/config") as response:
            assert (await response.json())["devTokens"] is False


def test_dev_tokens_need_the_demo_and_a_secret() -> None:
    """SIGNAL_DEMO_TOKENS alone, or without a secret, is a configuration error."""
    from service.errors import ConfigError

    with pytest.raises(ConfigError, match="DEMO_TOKENS"):
        Settings(jwt_secret=Secret(SECRET), demo_tokens=True)


async def _ringing(service: RunningService, browser: Browser) -> tuple[Page, Page]:
    """Two connected pages, alice calling bob; bob's page shows the incoming call."""
    alice = await open_demo(browser, service.url, "alice")
    bob = await open_demo(browser, service.url, "bob")
    await wait_state(alice, "signaling", "connected")
    await wait_state(bob, "signaling", "connected")
    await alice.fill("#peer", "bob")
    await alice.click("#call")
    await bob.locator("#incoming").wait_for(state="visible")
    return alice, bob


async def test_many_candidates_before_answer_are_kept(demo_service: RunningService,
                                                      browser: Browser) -> None:
    """Candidates that reach the callee before it accepts (manual answer) are applied after
    the offer: the call still connects after a 1 s wait to accept."""
    alice, bob = await _ringing(demo_service, browser)
    await asyncio.sleep(1)
    assert await bob.evaluate("window.demo.pending.length") > 0
    await bob.click("#accept")
    await wait_state(alice, "pc", "connected")
    await wait_state(bob, "pc", "connected")


async def test_callee_socket_drops_for_3_s_before_answering(demo_service: RunningService,
                                                            browser: Browser) -> None:
    """bob's page is ringing when its socket drops (transport closed; socket.io-client
    reconnects after 3 s and joins again): the call rings on, what alice's browser sent
    meanwhile is held and replayed, bob accepts, and the call connects."""
    alice, bob = await _ringing(demo_service, browser)
    await bob.evaluate("""() => {
        const manager = window.demo.socket.io;
        manager.reconnectionDelay(3000);
        manager.randomizationFactor(0);
        manager.engine.close();
    }""")
    await wait_state(bob, "signaling", "disconnected")
    # meanwhile alice's side renegotiates its ICE (the page would on a network change):
    # a signal for bob while he is away
    ack = await alice.evaluate("""async () => window.demo.socket.timeout(5000).emitWithAck(
        "candidate", {to: "bob", callId: window.demo.callId,
                      candidate: {candidate: "", sdpMid: "0", sdpMLineIndex: 0}})""")
    assert ack == {"ok": True, "delivered": False, "held": True}
    await wait_state(bob, "signaling", "connected")
    # the offer comes again with its first seq: the page drops it as a repeat
    await bob.wait_for_function("window.demo.log.some(l => l.includes('a repeat (seq 1) dropped'))")
    await bob.click("#accept")
    await wait_state(alice, "pc", "connected")
    await wait_state(bob, "pc", "connected")
    assert await _frames(bob, 5) >= 5


async def test_answered_on_another_device_and_busy(demo_service: RunningService,
                                                   browser: Browser) -> None:
    """bob is signed in on two pages: both ring, one accepts, the other is told the call
    was answered elsewhere; carol then calls bob and is told he is in another call."""
    alice = await open_demo(browser, demo_service.url, "alice")
    phone = await open_demo(browser, demo_service.url, "bob")
    laptop = await open_demo(browser, demo_service.url, "bob")
    for page in (alice, phone, laptop):
        await wait_state(page, "signaling", "connected")
    await alice.fill("#peer", "bob")
    await alice.click("#call")
    await phone.locator("#incoming").wait_for(state="visible")
    await laptop.locator("#incoming").wait_for(state="visible")
    await phone.click("#accept")
    await laptop.wait_for_function(
        "window.demo.state.ended === 'Answered on another of your devices.'")
    await wait_state(alice, "pc", "connected")
    await wait_state(phone, "pc", "connected")
    carol = await open_demo(browser, demo_service.url, "carol")
    await wait_state(carol, "signaling", "connected")
    await carol.fill("#peer", "bob")
    await carol.click("#call")
    await carol.wait_for_function("window.demo.state.ended === 'bob is in another call.'")
    assert (await state(phone))["pc"] == "connected"


async def test_an_ice_restart_through_a_claimed_call(demo_service: RunningService,
                                                     browser: Browser) -> None:
    """A connected call; bob's signaling path goes silent both ways without closing (his
    page talks to the service through a proxy of the test's, which stops forwarding); alice
    runs restartIce(), and its offer and candidates are written to bob's dead socket. Bob's
    page reconnects (as on a network change) and claims the call: it gets them again, in
    order, answers, and the call is connected again, video frames still being decoded."""
    from tests.support import Blackhole

    blackhole = await Blackhole(int(demo_service.url.rsplit(":", 1)[1])).start()
    try:
        alice = await open_demo(browser, demo_service.url, "alice")
        bob = await open_demo(browser, blackhole.url, "bob", auto_answer=True)
        await wait_state(alice, "signaling", "connected")
        await wait_state(bob, "signaling", "connected")
        await _call(alice, bob, "bob")
        before = await _frames(bob, 10)
        blackhole.freeze()
        bobs_ufrag = await alice.evaluate(
            "window.demo.pc.remoteDescription.sdp.match(/a=ice-ufrag:(.*)/)[1]")
        await alice.evaluate("window.demo.restartIce()")
        await bob.evaluate("window.demo.reconnectNow()")
        await bob.wait_for_function(
            "window.demo.log.some((line) => line.includes('Back in the call'))")
        # bob answered the restart's offer he got through the claim: new ICE credentials
        await alice.wait_for_function(
            f"!window.demo.pc.remoteDescription.sdp.includes('{bobs_ufrag}') &&"
            " window.demo.pc.signalingState === 'stable'", timeout=15000)
        await wait_state(alice, "pc", "connected")
        await wait_state(bob, "pc", "connected")
        assert await _frames(bob, before + 30) >= before + 30
        assert alice.errors == [] and bob.errors == []  # type: ignore[attr-defined]
    finally:
        await blackhole.stop()

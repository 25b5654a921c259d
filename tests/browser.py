"""Debian's Chromium driven by Playwright, with fake camera and microphone, for the call tests.

Playwright's own browser download does not work here; the tests use /usr/bin/chromium
(``apt-get install chromium``; scripts/test installs it when it can). A missing browser fails
the tests: it is not a reason to skip them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = os.environ.get("SIGNAL_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FLAGS = [
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # host candidates as IP addresses, not mDNS names: aiortc peers (and containers without
    # multicast) cannot resolve *.local
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def _require_chromium() -> None:
    assert shutil.which(CHROMIUM) or os.path.exists(CHROMIUM), (
        f"Chromium is required at {CHROMIUM} (Debian: apt-get install chromium)")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_demo(browser: Browser, base: str, user: str | None = None, *,
                    token: str | None = None, auto_answer: bool = False) -> Page:
    """A demo page connected as ``user`` (dev token) or with ``token``."""
    # Playwright evaluates its waits as script, which the page's CSP forbids (as it should)
    context = await browser.new_context(permissions=["camera", "microphone"], bypass_csp=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(f"{base}/demo/")
    if auto_answer:
        await page.check("#auto-answer")
    if token is None:
        assert user is not None
        await page.wait_for_selector("#dev-token:not([hidden])")
        await page.fill("#dev-user", user)
        await page.click("#get-token")
        await page.wait_for_function("document.querySelector('#token').value.length > 20")
    else:
        await page.fill("#token", token)
    await page.click("#connect")
    return page


async def state(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("() => ({...window.demo.state})")
    return result


async def wait_state(page: Page, key: str, value: str, timeout_ms: int = 15000) -> None:
    await page.wait_for_function(f"() => window.demo.state[{key!r}] === {value!r}",
                                 timeout=timeout_ms)

"""The associates' page in headless Chromium, driven by Playwright.

Two phone-sized pages (separate browser contexts, like two associates'
phones) are open on ``/associates``; an alert raised while they are open
appears on both; one associate claims it with a tap and the other page shows
it claimed at once.  The screenshot is saved as ``test-artifacts/associates.png``.

Playwright drives Debian's ``chromium`` (``make test`` installs it) through
``executable_path``: no browser download.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright

from tests.test_alerts import PROFILES, TOKEN, associates_toml, layout_with_assist, promotions_with_alert

pytestmark = pytest.mark.broker

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
WAIT_MS = 8000


def chromium_path() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make test` (installs it) or `apt-get install -y chromium`")
    return exe


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                           args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            await browser.close()


async def open_phone(browser: Browser, url: str) -> Page:
    """One page in its own browser context (its own localStorage: another phone)."""
    context = await browser.new_context(**PHONE)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    response = await page.goto(url, wait_until="load")
    assert response is not None and response.ok, response
    return page


async def tap(target: Locator) -> None:
    """A real tap at the element's centre (touch events through the input pipeline)."""
    await target.scroll_into_view_if_needed()
    box = await target.bounding_box()
    assert box is not None and box["height"] >= 44, "touch targets should be at least 44 px high"
    await target.tap()


async def test_page_shows_live_alert_and_claim_reaches_every_page(store_factory, agent_factory, mqtt_client):
    cfg = store_factory(layout=layout_with_assist(), promotions=promotions_with_alert(), profiles=PROFILES,
                        inventory={"apple": 10, "chips": 10}, toml_extra=associates_toml())
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/alert/#")
    url = f"{server.url}/associates?token={TOKEN}"
    async with chromium() as browser:
        dana = await open_phone(browser, url)
        eli = await open_phone(browser, url)
        for p in (dana, eli):
            await p.wait_for_function("() => document.body.dataset.synced === '1'")
            assert await p.locator(".card").count() == 0

        # An alert raised while both pages are open: a VIP walks in.
        await phone.publish(f"{R}/ping/uwb/vip-ada-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
        alert = await phone.next_json(f"{R}/alert/#")
        card = f'.card[data-alert-id="{alert["alert_id"]}"]'
        for p in (dana, eli):
            text = await p.locator(card).inner_text()  # waits for the card to appear
            assert "VIP" in text and "Ada" in text

        # Dana types her name and taps Claim.
        await tap(dana.locator("#name"))
        await dana.keyboard.insert_text("Dana")
        await tap(dana.locator(f"{card} button.claim"))
        assert "Claimed by you" in await dana.locator(f"{card}[data-state=claimed]").inner_text()
        assert "Claimed by Dana" in await eli.locator(f"{card}[data-state=claimed]").inner_text()
        # Someone else's claim is news, not an error: a neutral colour, not the warning red.
        taken = await eli.locator(f"{card} .state").evaluate("e => getComputedStyle(e).color")
        warn = await eli.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--warn').trim()")
        assert taken != "rgb(185, 28, 28)" and warn == "#b91c1c"
        # Cards name the zone, not its id; no toast lingers after a successful claim.
        zone = server.agent.rt.fences[alert["zone"]]
        assert (zone.name or zone.id) in await dana.locator(f"{card} .meta").inner_text()
        assert not await dana.locator("#toast").is_visible()
        assert await eli.locator(f"{card} button.claim").count() == 0
        assert await dana.evaluate("localStorage.getItem('associate-name')") == "Dana"
        ann = await phone.next_json(f"{R}/alert/#")
        assert (ann["alert_id"], ann["state"], ann["by"]) == (alert["alert_id"], "claimed", "Dana")
        assert server.agent.alerts.alerts[alert["alert_id"]].state == "claimed"

        # A second, open alert, so the screenshot shows both states.
        await phone.publish(f"{R}/inventory", {"sku": "apple", "qty": 0})
        second = await phone.next_json(f"{R}/alert/#")
        await dana.locator(f'.card[data-alert-id="{second["alert_id"]}"] button.claim').wait_for()
        await dana.evaluate("window.scrollTo(0, 0)")
        # The layout fits a phone: nothing wider than the viewport.
        assert await dana.evaluate("document.documentElement.scrollWidth") <= PHONE["viewport"]["width"]
        ARTIFACTS.mkdir(exist_ok=True)
        png = await dana.screenshot(path=ARTIFACTS / "associates.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"

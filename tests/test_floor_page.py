"""The floor on the associates' page, in headless Chromium driven by Playwright
(Debian's ``chromium`` through ``executable_path``: no browser download).

A phone-sized page shows the store map drawn from the layout; four shoppers
walk into produce (capacity 4) and it turns crowded with its live count; a
pickup customer walks in and the arrival is pinned to the entrance; tapping the
pin claims it (the shopper's device hears who is coming).  The screenshot is
saved in the test's tmp dir (``floor.png``)."""

from __future__ import annotations

import json
import shutil

import pytest
from playwright.async_api import async_playwright

from tests.test_floor import IN_PRODUCE, PROFILES, floor_layout
from tests.test_floor_broker import POS_AUTH, TOKEN, TOML

pytestmark = pytest.mark.broker

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


def chromium_path() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make test` (installs it) or `apt-get install -y chromium`")
    return exe


async def test_map_shows_zones_counts_and_a_pinned_alert_that_a_tap_claims(store_factory, agent_factory,
                                                                         mqtt_client, tmp_path):
    import aiohttp

    cfg = store_factory(layout=floor_layout(), profiles=PROFILES, toml_extra=TOML)
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/alert/#")
    notices = await phone.subscribe(f"{R}/notice/+")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/pickups", headers=POS_AUTH, json={
                "order_id": "O-9", "loyalty_id": "L-ADA", "zone": "entrance", "first_name": "Ada"}) as r:
            assert r.status == 201
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                           args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = await browser.new_context(**PHONE)
            page = await context.new_page()
            page.set_default_timeout(8000)
            await page.goto(f"{server.url}/associates?token={TOKEN}", wait_until="load")
            await page.wait_for_function("() => document.body.dataset.synced === '1'")
            # The map from the layout: every fence of floor 0, produce with its hole.
            await page.wait_for_selector('#map .zonegroup[data-zone="produce"]')
            zones = await page.eval_on_selector_all("#map .zonegroup", "gs => gs.map(g => g.dataset.zone)")
            assert set(zones) == {"entrance", "produce", "aisle-1", "coffee-display", "tills"}
            assert await page.locator('#map [data-zone="produce"] path').get_attribute("d") is not None

            # Four shoppers and an associate in produce: crowded, 4/4, live over the WebSocket.
            await phone.publish(f"{R}/ping/uwb/staff-1", {"x": 13.0, "y": 8.0, "acc": 0.5}, qos=0)
            for i, (x, y) in enumerate(IN_PRODUCE[:4]):
                await phone.publish(f"{R}/ping/uwb/s{i}", {"x": x, "y": y, "acc": 0.5}, qos=0)
            await page.wait_for_selector('#map [data-zone="produce"][data-state="crowded"][data-now="4"]')
            assert await page.locator('#map [data-zone="produce"] text.count').text_content() == "4/4"
            assert "crowded" in await page.locator('#map [data-zone="produce"] path').get_attribute("class")

            # The pickup customer walks in: the alert is pinned to the entrance.
            await phone.publish(f"{R}/ping/uwb/ada-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
            alert = await phone.next_json(f"{R}/alert/#")
            assert alert["kind"] == "pickup_arrival"
            pin = page.locator(f'#map .pin[data-alert-id="{alert["alert_id"]}"]')
            await pin.wait_for()
            box = await pin.bounding_box()
            assert box is not None and box["height"] >= 44 and box["width"] >= 44  # a finger's worth
            await page.fill("#name", "Dana")
            await page.screenshot(path=str(tmp_path / "floor.png"), full_page=True)
            # Nothing wider than the phone.
            assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["viewport"]["width"]

            # Tap the pin: claimed, on the page, on the broker, and the shopper hears who is coming.
            await pin.tap()
            await page.wait_for_selector(f'.card[data-alert-id="{alert["alert_id"]}"][data-state="claimed"]')
            await page.wait_for_selector(f'#map .pin.claimed[data-alert-id="{alert["alert_id"]}"]')
            ann = await phone.next_json(f"{R}/alert/#")
            assert (ann["alert_id"], ann["state"], ann["by"]) == (alert["alert_id"], "claimed", "Dana")
            msgs = [json.loads((await phone.next(f"{R}/notice/+")).payload) for _ in range(2)]
            assert [m["kind"] for m in msgs] == ["pickup", "pickup_claimed"] and "Dana" in msgs[1]["text"]
            assert notices.empty()
            await page.screenshot(path=str(tmp_path / "floor-claimed.png"), full_page=True)
            assert (tmp_path / "floor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            await browser.close()

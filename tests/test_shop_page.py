"""The shop page in headless Chromium (Playwright driving Debian's ``chromium``).

A phone-sized page with geolocation granted and emulated: it asks for
consent first; the emulated phone walks from outside into the produce
section; the offer card appears; "Use" shows the code with its QR code;
"Opt out" purges the device and stops further offers.  A second phone has
no geolocation at all and checks in by opening ``/shop?zone=produce``.
Screenshots go to the test's tmp dir and ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import wait_until
from tests.test_shop import wgs

pytestmark = pytest.mark.broker

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


@pytest.fixture
async def browser():
    from playwright import async_api as playwright  # a declared test dependency: missing is a failure, not a skip
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make test` (installs it) or `apt-get install -y chromium`")
    async with playwright.async_playwright() as p:
        b = await p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        await b.close()


def shoot(path_name: str, tmp_path: Path) -> list[Path]:
    ARTIFACTS.mkdir(exist_ok=True)
    return [tmp_path / path_name, ARTIFACTS / path_name]


async def choose(page, offers: bool, tracking: bool) -> None:
    await page.click(f'.choice[data-key="offers"] button[data-v="{str(offers).lower()}"]')
    await page.click(f'.choice[data-key="tracking"] button[data-v="{str(tracking).lower()}"]')
    await page.click("#continue")


async def test_walk_in_get_the_offer_use_it_then_opt_out(store_factory, agent_factory, browser, tmp_path):
    cfg = store_factory(toml_extra='[shop]\nlanguage = "en"\n[shop.text]\nwelcome = "Welcome to the test store"\n')
    server = await agent_factory(cfg)
    agent = server.agent
    lat, lon = wgs(cfg, 12, -4)  # outside every fence
    ctx = await browser.new_context(**PHONE, geolocation={"latitude": lat, "longitude": lon, "accuracy": 1},
                                    permissions=["geolocation"])
    page = await ctx.new_page()
    await page.goto(f"{server.url}/shop")
    assert await page.inner_text("h1") == "Test store"  # the store's name from the config
    assert await page.inner_text("#welcome") == "Welcome to the test store"
    assert await page.is_visible("#consent") and await page.is_visible("#optout")
    await choose(page, offers=True, tracking=True)
    session = await page.evaluate("JSON.parse(localStorage.getItem('shop-session'))")
    device = session["device"]
    pseudo = agent.pseudonym(device)
    await asyncio.wait_for(wait_until(lambda: pseudo in agent.consents and device in agent.tracks), 30)
    assert agent.consents[pseudo][0].offers and agent.consents[pseudo][0].tracking

    lat, lon = wgs(cfg, 12, 7)  # into produce
    await ctx.set_geolocation({"latitude": lat, "longitude": lon, "accuracy": 1})
    card = await page.wait_for_selector(".card.offer")
    assert "Fruit week" in await card.inner_text()
    for p in shoot("shop-offer.png", tmp_path):
        await page.screenshot(path=str(p))
    await page.click(".card.offer .use")
    await page.wait_for_selector("#code-qr svg")
    (offer_id,) = [r[0] for r in agent.ledger.conn.execute("SELECT offer_id FROM offers WHERE device = ?", (pseudo,))]
    code = agent.ledger.get_offer(offer_id).code
    assert code and await page.inner_text("#code-text") == code
    for p in shoot("shop.png", tmp_path):
        await page.screenshot(path=str(p))
    assert (tmp_path / "shop.png").stat().st_size > 10_000
    await page.click("#code-back")

    await page.click("#optout")
    await page.wait_for_selector("#optedout:not([hidden])")
    await asyncio.wait_for(wait_until(lambda: not agent.consents[pseudo][0].offers), 10)
    assert agent.consents[pseudo][0].tracking is False
    assert device not in agent.tracks  # purged: live position state
    led = agent.ledger.conn
    assert led.execute("SELECT count(*) FROM audit WHERE device = ? AND zone IS NOT NULL", (pseudo,)).fetchone()[0] == 0
    assert led.execute("SELECT count(*) FROM outbox WHERE device = ? AND kind = 'transition'",
                       (pseudo,)).fetchone()[0] == 0
    # walking on, the phone gets nothing more: the page stopped sending, and the gateway would refuse anyway
    pings = agent.metrics.pings.get("html5")
    lat, lon = wgs(cfg, 24, 10)  # aisle-1, which has an offer
    await ctx.set_geolocation({"latitude": lat, "longitude": lon, "accuracy": 1})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/ping?device={device}&token={session['token']}",
                             json={"x": 24, "y": 10, "acc": 1}) as r:
            assert r.status == 202
    assert agent.metrics.pings.get("html5") == pings + 1  # only ours
    assert led.execute("SELECT count(*) FROM offers WHERE device = ?", (pseudo,)).fetchone()[0] == 1
    assert await page.query_selector(".card.offer") is None
    await ctx.close()


async def test_shelf_code_checks_in_without_geolocation(store_factory, agent_factory, browser, tmp_path):
    cfg = store_factory()
    server = await agent_factory(cfg)
    ctx = await browser.new_context(**PHONE)  # no geolocation permission, no position
    page = await ctx.new_page()
    await page.goto(f"{server.url}/shop?zone=produce")
    await choose(page, offers=True, tracking=False)
    card = await page.wait_for_selector(".card.offer")
    assert "Fruit week" in await card.inner_text()
    assert "produce" in await page.inner_text("#checkin")
    for p in shoot("shop-checkin.png", tmp_path):
        await page.screenshot(path=str(p))
    device = (await page.evaluate("JSON.parse(localStorage.getItem('shop-session'))"))["device"]
    agent = server.agent
    assert server.agent.metrics.pings.get("checkin") == 1
    assert agent.consents[agent.pseudonym(device)][0].tracking is False
    # "No thanks" dismisses it
    await page.click(".card.offer .dismiss")
    await asyncio.wait_for(wait_until(lambda: agent.ledger.conn.execute(
        "SELECT action FROM offers WHERE device = ?", (agent.pseudonym(device),)).fetchone()[0] == "dismiss"), 10)
    await ctx.close()


async def test_location_denied_and_a_check_in_outside_hours_say_why(store_factory, agent_factory, browser):
    """Issue 25: with location denied the page says so (not "walk around"); a shelf check-in whose
    promotion is outside its hours says why no offer comes; no page asks for /favicon.ico."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    probe = store_factory()
    now = datetime.now(ZoneInfo(probe.timezone))
    m = now.hour * 60 + now.minute
    a, b = (m + 120) % 1440, (m + 180) % 1440
    hours = f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"
    cfg = store_factory(promotions=[{"id": "later", "title": "Later today", "zones": ["produce"],
                                     "hours": [hours]}])
    server = await agent_factory(cfg)
    ctx = await browser.new_context(**PHONE)  # no geolocation permission: denied
    page = await ctx.new_page()
    asked = []
    page.on("request", lambda r: asked.append(r.url))
    await page.goto(f"{server.url}/shop")
    await choose(page, offers=True, tracking=False)
    await page.wait_for_function("() => document.body.dataset.geo === 'off'")
    hint = await page.inner_text("#hint")
    assert "Location is off" in hint and "Walk around" not in hint
    await page.goto(f"{server.url}/shop?zone=produce")
    await page.wait_for_function("() => document.getElementById('checkin').dataset.note === '1'")
    hint = await page.inner_text("#hint")
    assert "right now" in hint and "Later today" in hint and hours.replace("-", "–") in hint
    assert not [u for u in asked if u.endswith("/favicon.ico")]
    await ctx.close()


async def test_a_phone_keeps_its_session_across_a_gateway_restart(store_factory, agent_factory, browser):
    """A gateway restart (sockets refused for a few seconds) is no reason for the
    page to throw its session away: tokens survive restarts, so the phone comes
    back as the same device and gets its live offer again.  (Found by stopping
    the gateway under an open page: after two failed reconnects it minted a new
    device, and its offer became "not your offer".)  A token the gateway refuses
    (401) still starts a new session."""
    from tests.conftest import free_port

    cfg = store_factory()
    listen = f"127.0.0.1:{free_port()}"
    server = await agent_factory(cfg, listen=listen)
    lat, lon = wgs(cfg, 12, 7)  # in produce
    ctx = await browser.new_context(**PHONE, geolocation={"latitude": lat, "longitude": lon, "accuracy": 1},
                                    permissions=["geolocation"])
    page = await ctx.new_page()
    await page.add_init_script("""(() => {  // count the page's sockets that closed without ever opening
        const W = window.WebSocket; window.__refused = 0;
        window.WebSocket = function (url, protocols) {
            const w = new W(url, protocols); let opened = false;
            w.addEventListener("open", () => { opened = true; });
            w.addEventListener("close", () => { if (!opened) window.__refused++; });
            return w;
        };
        window.WebSocket.prototype = W.prototype;
    })()""")
    await page.goto(f"{server.url}/shop")
    await choose(page, offers=True, tracking=True)
    await page.wait_for_selector(".card.offer")
    before = await page.evaluate("JSON.parse(localStorage.getItem('shop-session'))")

    await server.stop()
    await page.wait_for_function("() => window.__refused >= 2", timeout=30_000)  # two refused reconnects
    server = await agent_factory(cfg, listen=listen)
    await page.wait_for_function("() => document.getElementById('dot').className === 'live'", timeout=30_000)
    after = await page.evaluate("JSON.parse(localStorage.getItem('shop-session'))")
    assert after == before
    await page.click(".card.offer .use")  # the offer is still this device's: its code comes
    await page.wait_for_selector("#code-qr svg")

    # a session the gateway does not know (its key rotated) is replaced by a new one
    await page.evaluate("localStorage.setItem('shop-session', JSON.stringify("
                        "{device: 'web-' + 'a'.repeat(26), token: 'forged'}))")
    await page.reload()
    await page.wait_for_function("() => document.getElementById('dot').className === 'live'", timeout=30_000)
    fresh = await page.evaluate("JSON.parse(localStorage.getItem('shop-session'))")
    assert fresh["device"] != "web-" + "a" * 26 and fresh["device"] != before["device"]
    await ctx.close()


async def test_opt_out_is_one_tap_away_while_a_code_is_shown(store_factory, agent_factory, browser):
    """"An opt-out is always one tap away" — also while the code screen is up
    (found by tapping "Opt out" over a shown code: the full-screen code covered
    the header, so it took "Back" first)."""
    cfg = store_factory()
    server = await agent_factory(cfg)
    agent = server.agent
    ctx = await browser.new_context(**PHONE)
    page = await ctx.new_page()
    await page.goto(f"{server.url}/shop?zone=produce")
    await choose(page, offers=True, tracking=True)
    await page.wait_for_selector(".card.offer .use")
    await page.click(".card.offer .use")
    await page.wait_for_selector("#code-qr svg")
    on_top = await page.evaluate("""() => {
        const b = document.getElementById('optout').getBoundingClientRect();
        const hit = document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2);
        return hit && hit.id; }""")
    assert on_top == "optout"
    title = await page.evaluate("""() => {  // the code screen's own title is not hidden under the header
        const h = document.querySelector('header').getBoundingClientRect();
        return document.getElementById('code-title').getBoundingClientRect().top >= h.bottom; }""")
    assert title
    await page.click("#optout")
    await page.wait_for_selector("#optedout:not([hidden])")
    assert await page.is_hidden("#code")
    device = (await page.evaluate("JSON.parse(localStorage.getItem('shop-session'))"))["device"]
    pseudo = agent.pseudonym(device)
    await asyncio.wait_for(wait_until(lambda: not agent.consents[pseudo][0].offers), 10)
    await ctx.close()


async def test_a_german_page_says_location_is_off_in_german(store_factory, agent_factory, browser):
    """``[shop] language = "de"``: with location denied after a shelf check-in, the page's hint
    is German like every other label (found with a German store: it was the English
    "Location is off: offers come for the shelf you scanned ...")."""
    from edge_agent.http.shop.texts import TEXTS

    cfg = store_factory(toml_extra='[shop]\nlanguage = "de"\n',
                        promotions=[{"id": "members", "title": "Nur für Mitglieder", "zones": ["produce"],
                                     "segments": ["members"]}])  # running, but no offer for this phone
    server = await agent_factory(cfg)
    ctx = await browser.new_context(**PHONE, locale="de-DE")  # no geolocation permission: denied
    page = await ctx.new_page()
    await page.goto(f"{server.url}/shop?zone=produce")
    await choose(page, offers=True, tracking=False)
    await page.wait_for_function("() => document.body.dataset.geo === 'off'")
    await page.wait_for_selector("#checkin:not(:empty)")
    hint = await page.inner_text("#hint")
    assert hint and hint not in {v for v in TEXTS["en"].values()}, hint
    assert hint in TEXTS["de"].values()
    await ctx.close()

"""The associates' page in headless Chromium, driven over the Chrome DevTools Protocol.

Two phone-sized pages (separate browser contexts, like two associates'
phones) are open on ``/associates``; an alert raised while they are open
appears on both; one associate claims it with a tap and the other page shows
it claimed at once.  The screenshot is saved as ``test-artifacts/associates.png``.

CDP is spoken directly over aiohttp's WebSocket client: no extra
dependencies.  Chromium is Debian's ``chromium`` (``make test`` installs it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.test_alerts import PROFILES, TOKEN, associates_toml, layout_with_assist, promotions_with_alert

pytestmark = pytest.mark.broker

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--remote-debugging-port=0"]
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


def chromium_path() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make test` (installs it) or `apt-get install -y chromium`")
    return exe


class CDP:
    """A minimal Chrome DevTools Protocol client (flattened sessions)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.waiters: list[tuple[str, str | None, asyncio.Future]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self.pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                for w in list(self.waiters):
                    method, session, fut = w
                    if data.get("method") == method and session == data.get("sessionId") and not fut.done():
                        fut.set_result(data.get("params", {}))
                        self.waiters.remove(w)

    async def send(self, method: str, params: dict | None = None, session: str | None = None,
                   timeout: float = 10) -> dict:
        i = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send_json(msg)
        return await asyncio.wait_for(fut, timeout)

    def expect(self, method: str, session: str | None) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append((method, session, fut))
        return fut

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class Page:
    """One tab in its own browser context (its own localStorage: another phone)."""

    def __init__(self, cdp: CDP, session: str):
        self.cdp, self.session = cdp, session

    @classmethod
    async def open(cls, cdp: CDP, url: str) -> "Page":
        ctx = (await cdp.send("Target.createBrowserContext"))["browserContextId"]
        target = (await cdp.send("Target.createTarget", {"url": "about:blank", "browserContextId": ctx}))["targetId"]
        session = (await cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        page = cls(cdp, session)
        await page.send("Emulation.setDeviceMetricsOverride", PHONE)
        await page.send("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
        await page.send("Page.enable")
        loaded = cdp.expect("Page.loadEventFired", session)
        nav = await page.send("Page.navigate", {"url": url})
        assert "errorText" not in nav, nav
        await asyncio.wait_for(loaded, 10)
        return page

    async def send(self, method: str, params: dict | None = None) -> dict:
        return await self.cdp.send(method, params, self.session)

    async def eval(self, expr: str):
        r = await self.send("Runtime.evaluate", {"expression": expr, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in r:
            raise AssertionError(r["exceptionDetails"].get("exception", {}).get("description", r["exceptionDetails"]))
        return r["result"].get("value")

    async def wait_for(self, cond: str, timeout_ms: int = 8000):
        """Resolve when the JS expression ``cond`` is truthy, re-checked on every DOM change."""
        return await self.eval(f"""new Promise((resolve, reject) => {{
            const check = () => {{ try {{ return ({cond}); }} catch (e) {{ return false; }} }};
            const v = check();
            if (v) return resolve(v);
            const obs = new MutationObserver(() => {{
                const v = check();
                if (v) {{ obs.disconnect(); clearTimeout(t); resolve(v); }}
            }});
            obs.observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
            const t = setTimeout(() => {{ obs.disconnect(); reject(new Error("timed out waiting for: " + {json.dumps(cond)})); }},
                                 {timeout_ms});
        }})""")

    async def tap(self, selector: str) -> None:
        """A real click at the element's centre (mouse events through the input pipeline)."""
        box = await self.eval(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: "center"}});
            const r = e.getBoundingClientRect();
            return {{x: r.x + r.width / 2, y: r.y + r.height / 2, h: r.height}};
        }})()""")
        assert box["h"] >= 44, "touch targets should be at least 44 px high"
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                         "button": "left", "clickCount": 1})

    async def type_into(self, selector: str, text: str) -> None:
        await self.tap(selector)
        await self.send("Input.insertText", {"text": text})


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path):
    proc = await asyncio.create_subprocess_exec(
        chromium_path(), *CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    drain = None
    try:
        ws_url = None
        lines = []
        while ws_url is None:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not line:
                raise RuntimeError("chromium exited: " + b"".join(lines).decode(errors="replace")[-2000:])
            lines.append(line)
            m = re.search(rb"DevTools listening on (ws://\S+)", line)
            if m:
                ws_url = m.group(1).decode()

        async def drain_stderr():
            while await proc.stderr.readline():
                pass

        drain = asyncio.create_task(drain_stderr())
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                cdp = CDP(ws)
                try:
                    yield cdp
                finally:
                    with contextlib.suppress(Exception):
                        await cdp.send("Browser.close", timeout=5)
                    await cdp.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def test_page_shows_live_alert_and_claim_reaches_every_page(store_factory, agent_factory, mqtt_client,
                                                                 tmp_path):
    cfg = store_factory(layout=layout_with_assist(), promotions=promotions_with_alert(), profiles=PROFILES,
                        inventory={"apple": 10, "chips": 10}, toml_extra=associates_toml())
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/alert/#")
    url = f"{server.url}/associates?token={TOKEN}"
    async with chromium(tmp_path) as cdp:
        dana = await Page.open(cdp, url)
        eli = await Page.open(cdp, url)
        for p in (dana, eli):
            await p.wait_for("document.body.dataset.synced === '1'")
            assert await p.eval("document.querySelectorAll('.card').length") == 0

        # An alert raised while both pages are open: a VIP walks in.
        await phone.publish(f"{R}/ping/uwb/vip-ada-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
        alert = await phone.next_json(f"{R}/alert/#")
        card = f'.card[data-alert-id="{alert["alert_id"]}"]'
        for p in (dana, eli):
            text = await p.wait_for(f"document.querySelector('{card}')?.innerText")
            assert "VIP" in text and "Ada" in text

        # Dana types her name and taps Claim.
        await dana.type_into("#name", "Dana")
        await dana.tap(f"{card} button.claim")
        assert "Claimed by you" in await dana.wait_for(f"document.querySelector('{card}[data-state=claimed]')?.innerText")
        assert "Claimed by Dana" in await eli.wait_for(
            f"document.querySelector('{card}[data-state=claimed]')?.innerText")
        assert await eli.eval(f"document.querySelector('{card} button.claim') === null")
        assert await dana.eval("localStorage.getItem('associate-name')") == "Dana"
        ann = await phone.next_json(f"{R}/alert/#")
        assert (ann["alert_id"], ann["state"], ann["by"]) == (alert["alert_id"], "claimed", "Dana")
        assert server.agent.alerts.alerts[alert["alert_id"]].state == "claimed"

        # A second, open alert, so the screenshot shows both states.
        await phone.publish(f"{R}/inventory", {"sku": "apple", "qty": 0})
        second = await phone.next_json(f"{R}/alert/#")
        await dana.wait_for(f"document.querySelector('.card[data-alert-id=\"{second['alert_id']}\"] button.claim')")
        await dana.eval("window.scrollTo(0, 0)")
        # The layout fits a phone: nothing wider than the viewport.
        assert await dana.eval("document.documentElement.scrollWidth") <= PHONE["width"]
        shot = await dana.send("Page.captureScreenshot", {"format": "png"})
        ARTIFACTS.mkdir(exist_ok=True)
        png = base64.b64decode(shot["data"])
        (ARTIFACTS / "associates.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"

"""The associates' floor map on the sample store is readable (issue 25): at a
phone's 390x844 and a desktop's 1280x800, departments are drawn behind as
labelled regions, every leaf zone's count shows, no two visible labels
overlap, and a tap on a zone names it in full.  Headless Debian Chromium via
Playwright; the screenshots go to docs/img/ when UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from store_config import load_store, sample_path
from tests.test_floor_page import chromium_path

pytestmark = pytest.mark.broker

TOKEN = "change-me-associates"
SIZES = {"phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                   "has_touch": True},
         "desktop": {"viewport": {"width": 1280, "height": 800}}}
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


@pytest.fixture
def sample_cfg(tmp_path, mosquitto):
    d = tmp_path / "store"
    shutil.copytree(sample_path().parent, d)
    toml = d / "store.toml"
    toml.write_text(toml.read_text().replace("mqtt://127.0.0.1:1883", mosquitto.url)
                    .replace('dir = "var"', f'dir = "{tmp_path / "var"}"'))
    return load_store(toml)


LABELS = """() => Array.from(document.querySelectorAll('#map text')).filter(t => !t.closest('.pin'))
  .filter(t => !t.hasAttribute('hidden') && getComputedStyle(t).display !== 'none' && t.textContent)
  .map(t => { const r = t.getBoundingClientRect();
              return {zone: t.closest('g').dataset.zone, text: t.textContent, cls: t.getAttribute('class'),
                      x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; })"""


SHAPES = """() => { const out = {}, m = document.getElementById('map').getBoundingClientRect();
  out.map = {x0: m.left, y0: m.top, x1: m.right, y1: m.bottom};
  document.querySelectorAll('#map .zonegroup').forEach(g => { const r = g.querySelector('path').getBoundingClientRect();
    out[g.dataset.zone] = {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; });
  return out; }"""


def inside(label, box, slack=1.0):
    """The label's box lies within ``box`` (CSS px, with ``slack``: a text's box includes the room above
    and below its letters)."""
    return (label["x0"] >= box["x0"] - slack and label["x1"] <= box["x1"] + slack
            and label["y0"] >= box["y0"] - slack and label["y1"] <= box["y1"] + slack)


def overlaps(a, b, by=1.0):
    return a["x0"] < b["x1"] - by and b["x0"] < a["x1"] - by and a["y0"] < b["y1"] - by and b["y0"] < a["y1"] - by


@pytest.mark.parametrize("size", ["phone", "desktop"])
async def test_sample_floor_map_is_readable(sample_cfg, agent_factory, size, tmp_path):
    cfg = sample_cfg
    server = await agent_factory(cfg)
    leaves = {f.id for f in cfg.fences if f.kind != "obstacle"} - {"fresh", "grocery"}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                           args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = await browser.new_context(**SIZES[size])
            page = await context.new_page()
            page.set_default_timeout(8000)
            await page.goto(f"{server.url}/associates?token={TOKEN}", wait_until="load")
            await page.wait_for_selector('#map [data-zone="produce"] text.count')
            # departments behind, the sections and aisles they hold in front
            order = await page.eval_on_selector_all("#map .zonegroup", "gs => gs.map(g => g.dataset.zone)")
            for dept, kids in (("fresh", ("produce", "bakery")), ("grocery", ("aisle-1", "aisle-6"))):
                assert all(order.index(dept) < order.index(k) for k in kids), order
                assert await page.locator(f'#map [data-zone="{dept}"] text.deptname').is_visible()
            labels = await page.evaluate(LABELS)
            for i, a in enumerate(labels):
                for b in labels[i + 1:]:
                    assert not overlaps(a, b, by=0.5), (a, b)
            counted = {lb["zone"] for lb in labels if lb["cls"] == "count"}
            assert counted == leaves, leaves ^ counted
            vw = SIZES[size]["viewport"]["width"]
            assert all(0 <= lb["x0"] and lb["x1"] <= vw for lb in labels)
            # a leaf's name and count sit inside its shape, nothing clipped by the map's edge; a department's
            # name covers no zone; every zone bigger than a round display shows a name
            shapes = await page.evaluate(SHAPES)
            for lb in labels:
                s = shapes[lb["zone"]]
                if lb["zone"] in leaves:
                    assert inside(lb, s, slack=3 if lb["cls"] == "count" else 1), (lb, s)
                else:
                    assert inside(lb, shapes["map"]), lb
                    assert not any(overlaps(lb, shapes[z]) for z in leaves), lb
            named = {lb["zone"] for lb in labels if lb["cls"] not in ("count", "deptname")}
            big = {z for z in leaves if max(shapes[z]["x1"] - shapes[z]["x0"], shapes[z]["y1"] - shapes[z]["y0"]) > 30}
            assert big <= named, big - named
            # a tap names the zone in full
            await page.locator('#map [data-zone="aisle-5"] path').click()
            assert (await page.text_content("#zoneinfo")).startswith("Aisle 5: baby and family")
            shot = tmp_path / f"floor-map-{size}.png"
            await page.locator("#floor").screenshot(path=str(shot))
            if os.environ.get("UPDATE_SCREENSHOTS"):
                DOCS_IMG.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, DOCS_IMG / shot.name)
        finally:
            await browser.close()

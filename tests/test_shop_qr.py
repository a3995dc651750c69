"""`edge-agent qr`: one QR code per zone and one for the door, pointing at the shop page."""

from __future__ import annotations

import io

import segno
from shapely.geometry import Point

from edge_agent.commands.cli import main
from edge_agent.http.shop import checkin_point
from store_config import load_store
from tests.conftest import write_store


def svg_of(url: str) -> str:
    buf = io.BytesIO()
    segno.make_qr(url, error="q").save(buf, kind="svg", scale=10, border=4, title=url)
    return buf.getvalue().decode()


def test_qr_command_writes_door_and_zone_codes(tmp_path, capsys):
    path = write_store(tmp_path, broker_url=None, toml_extra="")
    text = path.read_text().replace('admin_token = "admin-secret"',
                                    'admin_token = "admin-secret"\npublic_url = "https://shop.example.test:8443/"')
    path.write_text(text)
    out = tmp_path / "qr"
    assert main(["qr", "--config", str(path), "--out", str(out)]) == 0
    cfg = load_store(path)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["door.svg", "index.html"] + [f"zone-{f.id}.svg" for f in cfg.fences])
    base = "https://shop.example.test:8443"
    assert (out / "door.svg").read_text() == svg_of(f"{base}/shop")
    assert (out / "zone-produce.svg").read_text() == svg_of(f"{base}/shop?zone=produce")
    index = (out / "index.html").read_text()
    assert "zone-aisle-1.svg" in index and f"{base}/shop?zone=aisle-1" in index
    assert "door.svg" in capsys.readouterr().out

    png = tmp_path / "png"
    assert main(["qr", "--config", str(path), "--out", str(png), "--format", "png",
                 "--base-url", "http://10.0.0.2:8080"]) == 0
    assert (png / "door.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://10.0.0.2:8080/shop?zone=produce" in (png / "index.html").read_text()


def test_checkin_point_is_well_inside_each_fence(tmp_path):
    cfg = load_store(write_store(tmp_path, broker_url=None))
    for f in cfg.fences:
        x, y = checkin_point(f)
        p = Point(x, y)
        assert f.geometry.contains(p)
        assert f.geometry.exterior.distance(p) > 0.3 or f.circle is not None
        for hole in getattr(f.geometry, "interiors", ()):
            assert hole.distance(p) > 0.3

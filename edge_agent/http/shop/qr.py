"""QR codes, rendered server-side with ``segno`` (pure Python, no image library).

- :func:`code_svg` — a redemption code as an inline SVG for the page;
- :func:`write_store_codes` — ``edge-agent qr``: one code per zone (a shelf
  check-in, ``{public_url}/shop?zone=ID``) and one for the door
  (``{public_url}/shop``), as SVG or PNG, plus ``index.html`` to print them all.
"""

from __future__ import annotations

import html
import io
import re
import urllib.parse
from pathlib import Path

import segno

from store_config.model import StoreConfig

SKIP_KINDS = frozenset({"staff_only"})  # no shopper checks in behind the counter


def code_svg(code: str) -> str:
    """A redemption code as an SVG QR code (error correction M, dark on white)."""
    buf = io.BytesIO()
    segno.make_qr(code, error="m").save(buf, kind="svg", scale=8, border=4, xmldecl=False,
                                         svgns=True, title=code, svgclass="qr", lineclass=None,
                                         light="#fff", omitsize=True)
    return buf.getvalue().decode()


def public_url(cfg: StoreConfig) -> str:
    """``[http] public_url``, else what ``[http] listen`` and TLS give (a
    wildcard host is no address a phone can use: set ``public_url``)."""
    if cfg.http.public_url:
        return cfg.http.public_url
    scheme = "https" if cfg.http.tls_cert else "http"
    return f"{scheme}://{cfg.http.listen}"


def shop_url(base: str, zone: str | None = None) -> str:
    return f"{base}/shop" + (f"?zone={urllib.parse.quote(zone, safe='')}" if zone else "")


def write_store_codes(cfg: StoreConfig, out: Path, *, fmt: str = "svg", base: str | None = None) -> list[Path]:
    """Write ``door.{fmt}``, ``zone-{id}.{fmt}`` per fence and ``index.html``; returns the image paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = (base or public_url(cfg)).rstrip("/")
    items = [("door", cfg.name, shop_url(base))]
    for f in sorted(cfg.fences, key=lambda f: f.id):
        if f.kind not in SKIP_KINDS:
            items.append((f"zone-{re.sub(r'[^A-Za-z0-9._-]', '_', f.id)}", f.name or f.id, shop_url(base, f.id)))
    written: list[Path] = []
    cells = []
    for stem, label, url in items:
        path = out / f"{stem}.{fmt}"
        qr = segno.make_qr(url, error="q")
        if fmt == "png":
            qr.save(str(path), kind="png", scale=10, border=4)
        else:
            qr.save(str(path), kind="svg", scale=10, border=4, title=url)
        written.append(path)
        cells.append(f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(url)}">'
                     f'<figcaption><b>{html.escape(label)}</b><br><small>{html.escape(url)}</small>'
                     f'</figcaption></figure>')
    (out / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><title>" + html.escape(cfg.name) + " — shelf codes</title>"
        "<style>body{font:14px system-ui,sans-serif}figure{display:inline-block;width:45%;margin:1em;"
        "text-align:center;page-break-inside:avoid}img{width:100%}</style>" + "".join(cells) + "\n",
        encoding="utf-8")
    return written

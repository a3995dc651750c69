"""The store's own page for shoppers without an app (DESIGN.md, "Shoppers without our app").

- ``GET /shop`` — the page (``edge_agent/http/static/shop.html``: plain HTML, CSS
  and JS in one file, nothing fetched from elsewhere); ``?zone=ID`` is a shelf
  QR check-in.
- ``POST /v1/shop/session`` → ``{"device": "web-…", "token"}`` (:mod:`.sessions`).
- Every later call names its device and carries that device's token
  (``Authorization: Bearer`` or ``?token=``), else 401:
  ``POST /v1/ping?device=`` (any ping payload, source ``html5``),
  ``POST /v1/shop/checkin?device=&zone=`` (enters the zone as a precise ping
  would: source ``checkin``, at the fence's pole of inaccessibility, ``acc``
  0.1 m), ``GET /shop/ws?device=&token=`` (:mod:`.channel`) and
  ``GET /shop/code.svg?device=&token=&offer_id=`` (an applied offer's code as
  a QR code, :mod:`.qr`).
- Rate limits (:mod:`.limits`): ``[http] ping_rate`` per device (bursts of
  ``ping_burst``) on pings and check-ins, HTTP (429) and WebSocket (dropped);
  ``[http] address_rate`` per client address on every request here; both
  counted in ``edge_http_limited_total{path,by}``.

:func:`setup` adds the routes and hooks the channel into the agent's
after-commit publishing (``AgentPort.outlets``).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import weakref
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web
from shapely.geometry import MultiPolygon
from shapely.ops import polylabel

from edge_agent.pipeline.codecs import Ping
from edge_agent.http.base import close_socket, given_token, read_body
from edge_agent.transport.mqtt import Message
from .channel import ShopChannel
from .qr import code_svg
from .sessions import Sessions
from .notes import checkin_note
from .texts import texts

if TYPE_CHECKING:  # pragma: no cover
    from edge_agent.http.base import AgentPort

log = logging.getLogger("edge_agent.http.shop")

__all__ = ["setup", "CHANNEL", "ShopChannel", "Sessions", "checkin_point"]

CHANNEL: web.AppKey[ShopChannel] = web.AppKey("shop_channel", ShopChannel)
MAX_BODY = 64 * 1024
CHECKIN_ACC_M = 0.1
PAGE_HEADERS = {
    "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY", "Permissions-Policy": "geolocation=(self)",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
}


def _unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text='{"error": "this device\'s session token is required"}',
                                content_type="application/json", headers={"WWW-Authenticate": "Bearer"})


def _limited(retry_s: float) -> web.HTTPTooManyRequests:
    return web.HTTPTooManyRequests(text='{"error": "rate_limited"}', content_type="application/json",
                                   headers={"Retry-After": str(max(1, round(retry_s)))})


def checkin_point(fence) -> tuple[float, float]:
    """A point well inside ``fence``: a circle's centre, else the pole of
    inaccessibility of its (largest) polygon — the farthest from every edge."""
    if fence.circle is not None:
        return fence.circle[0], fence.circle[1]
    geom = fence.geometry
    if isinstance(geom, MultiPolygon):
        geom = max(geom.geoms, key=lambda g: g.area)
    p = polylabel(geom, tolerance=0.05)
    return p.x, p.y


def _page_response(cfg) -> web.Response:
    """``GET /shop``: the page, with the store's name, language, texts and zones in its boot blob."""
    boot = {"store": cfg.name, "lang": cfg.shop.language, "tz": cfg.timezone, "text": texts(cfg.shop.language, cfg.shop.text),
            "zones": {f.id: f.name or f.id for f in cfg.fences}}
    blob = json.dumps(boot, ensure_ascii=False).replace("<", "\\u003c")
    doc = PAGE.replace("__LANG__", html.escape(cfg.shop.language)) \
              .replace("__TITLE__", html.escape(cfg.name)).replace("/*BOOT*/null", blob)
    return web.Response(text=doc, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


async def _serve_socket(request: web.Request, device: str, channel: ShopChannel, sockets: weakref.WeakSet,
                        max_msg_size: int, on_message: Any) -> web.WebSocketResponse:
    """``GET /shop/ws`` for an authorized ``device``: pump the channel's messages to the
    page and hand each text frame to ``on_message(data)`` (its reply, if any, goes back)."""
    sock = web.WebSocketResponse(heartbeat=25, max_msg_size=max_msg_size)
    await sock.prepare(request)
    sockets.add(sock)
    q = channel.attach(device)

    async def pump() -> None:
        for m in channel.snapshot(device):
            await sock.send_json(m)
        while True:
            m = await q.get()
            for out in (channel.snapshot(device) if m is None else (m,)):
                await sock.send_json(out)

    sender = asyncio.create_task(pump())
    try:
        async for msg in sock:
            if msg.type == WSMsgType.ERROR or sender.done():
                break
            if msg.type == WSMsgType.TEXT:
                reply = on_message(msg.data)
                if reply is not None:
                    await sock.send_json(reply)
    finally:
        channel.detach(device, q)
        await close_socket(sock, sender)
    return sock


def _on_page_message(device: str, data: str, *, channel: ShopChannel, clock: Any, on_batch: Any,
                     consent_for: Any, pseudonym: Any) -> dict[str, Any] | None:
    """A page's ``{"type": "ping" | "action" | "consent", ...}`` (the MQTT payload beside ``type``).

    ``clock``, ``on_batch``, ``consent_for`` and ``pseudonym`` are the agent's."""
    try:
        obj = orjson.loads(data)  # strict: deep nesting and huge numbers are refused here
    except orjson.JSONDecodeError:
        obj = None
    kind = obj.pop("type", None) if isinstance(obj, dict) else None
    if kind not in ("ping", "action", "consent"):
        return {"type": "error", "error": "bad_message",
                "detail": 'expected {"type": "ping" | "action" | "consent", ...}'}
    now = clock()
    if kind == "ping":
        if channel.allow_device(device, "ws"):  # beyond ping_rate: dropped (and counted)
            channel.submit(channel.message(device, "ping", obj, now))
        return None
    channel._flush()  # the pings before it first: an opt-out never overtakes a ping
    on_batch([channel.message(device, kind, obj, now)])
    if kind == "consent":
        _, consent = consent_for(device, pseudonym(device))
        return {"type": "consent", "offers": consent.offers, "tracking": consent.tracking}
    return None


def malformed_json(body: bytes) -> bool:
    """A body that sets out as JSON (``{`` or ``[``) and is not JSON as the contract
    takes it — cut short, nesting past 1,024 levels, numbers beyond doubles, NaN:
    every HTTP path answers that 400.  msgpack, or JSON that is no usable ping,
    is the ping's own dead letter: 422."""
    text = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] not in (b"{", b"["):
        return False  # msgpack, or no JSON at all
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return True
    return False


def setup(app: web.Application, agent_key: "web.AppKey[AgentPort]") -> None:
    """Add the shop's routes to ``app`` and hook its channel into the agent."""
    agent = app[agent_key]
    channel = ShopChannel(agent)
    app[CHANNEL] = channel
    agent.outlets.append(channel.outlet)
    sockets: weakref.WeakSet = weakref.WeakSet()
    points: dict[tuple[str, str], tuple[float, float]] = {}  # (config version, zone) -> check-in point

    async def shop_ctx(app: web.Application):
        channel.sessions = Sessions.load(agent.cfg.data_dir)  # after the agent's start: the data dir exists
        yield

    def authorized(request: web.Request, path: str) -> str:
        """The request's device, once its token and the client address's rate are checked."""
        if not channel.allow_address(request.remote, path):
            raise _limited(1.0 / agent.cfg.http.address_rate)
        device = request.query.get("device", "")
        token = given_token(request, allow_query=True)
        if channel.sessions is None or not channel.sessions.verify(device, token):
            raise _unauthorized()
        return device

    def device_rate(device: str, path: str) -> None:
        if not channel.allow_device(device, path):
            raise _limited(1.0 / agent.cfg.http.ping_rate)

    async def page(request: web.Request) -> web.Response:
        return _page_response(agent.cfg)

    async def session(request: web.Request) -> web.Response:
        if not channel.allow_address(request.remote, "session"):
            raise _limited(1.0 / agent.cfg.http.address_rate)
        if channel.sessions is None:
            raise web.HTTPServiceUnavailable(text="starting\n")
        device, token = channel.sessions.new()
        return web.json_response({"device": device, "token": token}, status=201,
                                 headers={"Cache-Control": "no-store"})

    async def post_ping(request: web.Request) -> web.Response:
        """``POST /v1/ping?device=...&source=html5`` with any ping payload (the device's token required)."""
        device = authorized(request, "ping")
        device_rate(device, "ping")
        source = request.query.get("source", "html5")
        body = await read_body(request, MAX_BODY)  # whole, however it arrives; 413 past the limit
        msg = Message(f"{agent.root}/ping/{source}/{device}", body, 0, 0, agent.clock())
        dead = agent.metrics.deadletters.values
        before = dict(dead)
        if not agent.on_batch([msg]):  # not on disk: its offer withheld, nothing of it kept
            raise web.HTTPServiceUnavailable(text='{"error": "storage"}', content_type="application/json")
        grew = [labels[0] for labels, n in dead.items() if n > before.get(labels, 0.0)]
        if grew:  # the ping's dead letter: 422 with its reason; malformed JSON is 400 on every path
            return web.json_response({"accepted": False, "reason": grew[0]},
                                     status=400 if malformed_json(body) else 422)
        return web.json_response({"accepted": True}, status=202)

    async def checkin(request: web.Request) -> web.Response:
        device = authorized(request, "checkin")
        device_rate(device, "checkin")
        zone = request.query.get("zone", "")
        fence = agent.rt.fences.get(zone)
        if fence is None:
            raise web.HTTPNotFound(text='{"error": "unknown_zone"}', content_type="application/json")
        key = (agent.cfg.version, zone)
        if key not in points:
            if len(points) > 10000:
                points.clear()
            points[key] = checkin_point(fence)
        x, y = points[key]
        now = agent.clock()
        if not agent.ingest_pings([Ping(device=device, source="checkin", received=now, x=x, y=y,
                                        acc=CHECKIN_ACC_M, floor=fence.floor)]):
            raise web.HTTPServiceUnavailable(text='{"error": "storage"}', content_type="application/json")
        body = {"accepted": True, "zone": zone}
        note = checkin_note(fence, agent.cfg.promotions, datetime.fromtimestamp(now, agent.rt.tz),
                            stopped=agent.state.campaign.stopped)
        if note:
            body["note"] = note  # no offer can come of this check-in: the page says why
        return web.json_response(body, status=202)

    async def code(request: web.Request) -> web.Response:
        device = authorized(request, "code")
        row = agent.ledger.get_offer(request.query.get("offer_id", "")) if agent.ledger else None
        if row is None or row.device != agent.pseudonym(device) or not row.code:
            raise web.HTTPNotFound(text='{"error": "no_code"}', content_type="application/json")
        return web.Response(text=code_svg(row.code), content_type="image/svg+xml",
                            headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        device = authorized(request, "ws")
        return await _serve_socket(
            request, device, channel, sockets, agent.cfg.ingest.max_payload_bytes,
            lambda data: _on_page_message(device, data, channel=channel, clock=agent.clock, on_batch=agent.on_batch,
                                          consent_for=agent.consent_for, pseudonym=agent.pseudonym))

    async def close_sockets(app: web.Application) -> None:
        for s in list(sockets):
            await s.close(code=1001, message=b"server shutdown")

    app.cleanup_ctx.append(shop_ctx)
    app.on_shutdown.append(close_sockets)
    app.router.add_get("/shop", page)
    app.router.add_get("/shop/ws", ws)
    app.router.add_get("/shop/code.svg", code)
    app.router.add_post("/v1/shop/session", session)
    app.router.add_post("/v1/shop/checkin", checkin)
    app.router.add_post("/v1/ping", post_ping)


def _page() -> str:
    from importlib.resources import files

    return files("edge_agent.http").joinpath("static/shop.html").read_text(encoding="utf-8")


PAGE = _page()

"""The associates' HTTP side: their page, its WebSocket, and the alerts API.

- ``GET /associates`` — the page (``static/associates.html``);
- ``GET /associates/ws`` — live alerts: a ``snapshot`` of the open alerts,
  then every ``alert`` and ``state`` change as it is committed;
- ``GET /v1/alerts`` — the open alerts;
- ``POST /v1/alerts/{id}/claim`` and ``/resolve`` — body
  ``{"associate": "..."}``; 404 for an unknown alert, 409 when already
  claimed or resolved.

Every path needs ``[associates] token`` as ``Authorization: Bearer`` (the
page and its WebSocket also take ``?token=``, which a browser can put in a
URL).  The rules live in :class:`~edge_agent.pipeline.alerts.AlertManager`, which
knows nothing of HTTP: these handlers call its plain methods (``claim``,
``resolve``, ``open_alerts``, ``subscribe`` / ``unsubscribe``).
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from edge_agent.pipeline.alerts import MAX_ASSOCIATE_LEN, AlertManager, ClaimError, valid_associate
from .base import AGENT, close_socket, require_associate

STATIC = Path(__file__).parent / "static"
PAGE_QUEUE = 1000  # changes a page may fall behind by before it is sent a fresh snapshot

SOCKETS: web.AppKey[weakref.WeakSet] = web.AppKey("associates_sockets", weakref.WeakSet)


def _manager(request: web.Request) -> AlertManager:
    return request.app[AGENT].alerts


async def page(request: web.Request) -> web.Response:
    require_associate(request, allow_query=True)
    html = (STATIC / "associates.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers={
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY"})


async def ws(request: web.Request) -> web.WebSocketResponse:
    require_associate(request, allow_query=True)
    alerts = _manager(request)
    sock = web.WebSocketResponse(heartbeat=25)
    await sock.prepare(request)
    request.app[SOCKETS].add(sock)
    q: asyncio.Queue = asyncio.Queue(maxsize=PAGE_QUEUE)

    def deliver(data: dict[str, Any]) -> None:
        try:
            q.put_nowait(data)
        except asyncio.QueueFull:  # a stalled page: start it over from a snapshot
            while not q.empty():
                q.get_nowait()
            q.put_nowait({"type": "snapshot", "alerts": alerts.open_alerts()})

    alerts.subscribe(deliver)

    async def pump() -> None:
        await sock.send_json({"type": "snapshot", "alerts": alerts.open_alerts()})
        while True:
            msg = await q.get()
            await sock.send_json(msg)

    sender = asyncio.create_task(pump())
    try:
        async for msg in sock:
            if msg.type == WSMsgType.ERROR:
                break
            if sender.done():
                break
    finally:
        alerts.unsubscribe(deliver)
        await close_socket(sock, sender)
    return sock


async def _change(request: web.Request, fn_name: str) -> web.Response:
    require_associate(request)
    alert_id = request.match_info["id"]
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text='body must be JSON: {"associate": "..."}\n') from None
    associate = body.get("associate") if isinstance(body, dict) else None
    if not valid_associate(associate):
        raise web.HTTPBadRequest(text=f"'associate' must be a non-empty string of at most "
                                      f"{MAX_ASSOCIATE_LEN} characters\n")
    request.app[AGENT].touch()  # the pipeline's time for this out-of-batch change
    alerts = _manager(request)
    try:
        alert = getattr(alerts, fn_name)(alert_id, associate.strip())
    except ClaimError as exc:
        return web.json_response({"alert_id": alert_id, "error": exc.error, "by": exc.by}, status=exc.status)
    alerts.commit()
    return web.json_response({"alert_id": alert.alert_id, "kind": alert.kind, "state": alert.state,
                              "by": alert.by})


async def claim(request: web.Request) -> web.Response:
    return await _change(request, "claim")


async def resolve(request: web.Request) -> web.Response:
    return await _change(request, "resolve")


async def list_alerts(request: web.Request) -> web.Response:
    require_associate(request)
    return web.json_response({"alerts": _manager(request).open_alerts()})


async def _close_sockets(app: web.Application) -> None:
    for s in list(app[SOCKETS]):
        await s.close(code=1001, message=b"server shutdown")


def add_routes(app: web.Application) -> None:
    """Add ``/associates``, ``/associates/ws`` and ``/v1/alerts[/{id}/claim|resolve]`` to ``app``."""
    app[SOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/associates", page)
    app.router.add_get("/associates/ws", ws)
    app.router.add_get("/v1/alerts", list_alerts)
    app.router.add_post("/v1/alerts/{id}/claim", claim)
    app.router.add_post("/v1/alerts/{id}/resolve", resolve)

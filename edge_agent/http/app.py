"""The aiohttp application: health, metrics, admin; the shop page and browser ingest (``shop``).

The application owns every long-lived resource (STYLE.md §4): the agent is
started and stopped by one ``cleanup_ctx`` and shared under a typed
``web.AppKey`` (:data:`edge_agent.http.base.AGENT`).  Routes of their own
modules are added here too: the associates' page and alerts
(:mod:`.http_associates`) and the vendor feeds (:mod:`.sources`).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Callable

from aiohttp import web

from . import delivery
from . import associates as http_associates, floor as http_floor, pos, shop, sources
from . import privacy
from edge_agent.storage.ledger import AuditError, parse_since
from .base import AGENT, AgentPort, bearer_ok, require_admin

log = logging.getLogger("edge_agent.http.app")

MAX_BODY = 64 * 1024


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    broker = bool(agent.mqtt and agent.mqtt.connected.is_set())
    storage = agent.storage_ok
    body = {"broker_connected": broker, "config_loaded": agent.ready, "config_version": agent.cfg.version,
            "storage_ok": storage}
    return web.json_response(body, status=200 if broker and agent.ready and storage else 503)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[AGENT].metrics.render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def admin_reload(request: web.Request) -> web.Response:
    require_admin(request)
    agent = request.app[AGENT]
    reload = getattr(agent, "reload_from_files", None)
    if reload is None:
        raise web.HTTPNotImplemented(text="reload not available\n")
    ok, problems = reload()
    return web.json_response({"ok": ok, "version": agent.cfg.version, "problems": problems},
                             status=200 if ok else 422)


async def admin_requeue(request: web.Request) -> web.Response:
    """Put events central refused (set aside) back in the outbox, e.g. after
    fixing ``[sync] token``."""
    require_admin(request)
    agent = request.app[AGENT]
    agent.ledger.begin()
    try:
        n = agent.ledger.outbox.requeue_aside()
        agent.ledger.commit()
    except sqlite3.Error as exc:
        agent.ledger.rollback()
        agent.storage_failed(exc)  # /readyz 503 until the ledger takes writes again
        raise web.HTTPServiceUnavailable(text="storage unavailable; nothing was requeued, retry\n") from None
    wake = getattr(getattr(agent.sync, "uplink", None), "wake", None)
    if wake is not None:
        wake.set()
    return web.json_response({"requeued": n})


async def admin_audit(request: web.Request) -> web.Response:
    require_admin(request)
    agent = request.app[AGENT]
    device = request.query.get("device")
    try:
        since = parse_since(request.query.get("since", "0"), agent.rt.tz)  # epoch or ISO 8601 (store time)
        limit = min(int(request.query.get("limit", "1000")), 10000)
        if limit < 0:  # SQLite reads LIMIT -1 as no limit: around the 10,000 cap
            raise ValueError(limit)
    except (ValueError, AuditError):
        raise web.HTTPBadRequest(text="'since' must be epoch seconds or ISO 8601, 'limit' a number from 0 to "
                                      "10000\n") from None
    rows = agent.ledger.read_audit(device=agent.pseudonym(device) if device else None, since=since, limit=limit)
    return web.json_response({"decisions": rows})


def make_app(agent: AgentPort, *, extra: list[Callable[[web.Application], None]] | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[AGENT] = agent

    async def agent_ctx(app: web.Application):
        await agent.start()
        yield
        await agent.stop()

    app.cleanup_ctx.append(agent_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/admin/reload", admin_reload)
    privacy.add_routes(app, AGENT, require_admin)  # DELETE /v1/admin/devices/{d}, GET .../{d}/export
    app.router.add_get("/v1/admin/audit", admin_audit)
    app.router.add_post("/v1/admin/outbox/requeue", admin_requeue)
    sources.add_routes(app)  # /v1/ingest/meraki, /v1/ingest/aruba
    http_associates.add_routes(app)  # /associates, /associates/ws, /v1/alerts/...
    shop.setup(app, AGENT)  # /shop, /shop/ws, /v1/shop/session|checkin, /v1/ping (device session tokens)
    delivery.setup(app, AGENT)  # [delivery] webhook_url: offers, codes and notices to the retailer's push service
    pos.setup_routes(app, AGENT, require_admin, bearer_ok)  # /v1/pos/*, promotions pause|resume, report
    http_floor.add_routes(app)  # /v1/floor, /v1/floor/map, /v1/pickups
    for fn in extra or ():
        fn(app)
    return app

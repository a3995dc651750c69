"""The aiohttp application: health, metrics, browser ingest, admin.

The application owns every long-lived resource (STYLE.md §4): the agent is
started and stopped by one ``cleanup_ctx`` and shared under a typed
``web.AppKey``.
"""

from __future__ import annotations

import hmac
import logging
from typing import Callable

from aiohttp import web

from . import alerts, pos
from .audit import AuditError, parse_since
from .mqtt import Message
from .service import Agent

log = logging.getLogger("edge_agent.http")

AGENT: web.AppKey[Agent] = web.AppKey("agent", Agent)
MAX_BODY = 64 * 1024


def _bearer_ok(request: web.Request, token: str | None, *, allow_query: bool = False) -> bool:
    if not token:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" and credentials else None
    if given is None and allow_query:
        given = request.query.get("token")
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def require_admin(request: web.Request) -> None:
    if not _bearer_ok(request, request.app[AGENT].cfg.http.admin_token):
        raise web.HTTPUnauthorized(text="admin token required\n", headers={"WWW-Authenticate": "Bearer"})


def require_associate(request: web.Request, *, allow_query: bool = False) -> None:
    if not _bearer_ok(request, request.app[AGENT].cfg.associates.token, allow_query=allow_query):
        raise web.HTTPUnauthorized(text="associates token required\n", headers={"WWW-Authenticate": "Bearer"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    broker = bool(agent.mqtt and agent.mqtt.connected.is_set())
    body = {"broker_connected": broker, "config_loaded": agent.ready, "config_version": agent.cfg.version}
    return web.json_response(body, status=200 if broker and agent.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[AGENT].metrics.render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def post_ping(request: web.Request) -> web.Response:
    """Browser ingest: ``POST /v1/ping?device=...&source=html5`` with any ping payload."""
    agent = request.app[AGENT]
    device = request.query.get("device", "")
    source = request.query.get("source", "html5")
    if not device or "/" in device or "+" in device or "#" in device:
        raise web.HTTPBadRequest(text="query parameter 'device' is required (no '/', '+' or '#')\n")
    body = await request.content.read(MAX_BODY + 1)
    topic = f"{agent.root}/ping/{source}/{device}"
    msg = Message(topic, body, 0, 0, agent.clock())
    before = sum(agent.metrics.deadletters.values.values())
    agent.on_batch([msg])
    if sum(agent.metrics.deadletters.values.values()) > before:
        return web.json_response({"accepted": False, "reason": _last_reason(agent)}, status=422)
    return web.json_response({"accepted": True}, status=202)


def _last_reason(agent: Agent) -> str:
    return getattr(agent, "last_deadletter_reason", "rejected")


async def admin_reload(request: web.Request) -> web.Response:
    require_admin(request)
    agent = request.app[AGENT]
    reload = getattr(agent, "reload_from_files", None)
    if reload is None:
        raise web.HTTPNotImplemented(text="reload not available\n")
    ok, problems = reload()
    return web.json_response({"ok": ok, "version": agent.cfg.version, "problems": problems},
                             status=200 if ok else 422)


async def admin_forget(request: web.Request) -> web.Response:
    require_admin(request)
    agent = request.app[AGENT]
    device = request.match_info["device"]
    agent.forget(device)
    return web.json_response({"forgotten": agent.pseudonym(device)})


async def admin_requeue(request: web.Request) -> web.Response:
    """Put events central refused (set aside) back in the outbox, e.g. after
    fixing ``[sync] token``."""
    require_admin(request)
    agent = request.app[AGENT]
    agent.ledger.begin()
    n = agent.ledger.outbox.requeue_aside()
    agent.ledger.commit()
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
    except (ValueError, AuditError):
        raise web.HTTPBadRequest(text="'since' must be epoch seconds or ISO 8601, 'limit' a number\n") from None
    rows = agent.ledger.read_audit(device=agent.pseudonym(device) if device else None, since=since, limit=limit)
    return web.json_response({"decisions": rows})


def make_app(agent: Agent, *, extra: list[Callable[[web.Application], None]] | None = None) -> web.Application:
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
    app.router.add_post("/v1/ping", post_ping)
    app.router.add_post("/v1/admin/reload", admin_reload)
    app.router.add_delete("/v1/admin/devices/{device}", admin_forget)
    app.router.add_get("/v1/admin/audit", admin_audit)
    app.router.add_post("/v1/admin/outbox/requeue", admin_requeue)
    from .sources import add_routes as add_source_routes  # here: the adapters import AGENT from this module
    add_source_routes(app)  # /v1/ingest/meraki, /v1/ingest/aruba
    alerts.setup_routes(app, AGENT, require_associate)  # /associates, /associates/ws, /v1/alerts/...
    pos.setup_routes(app, AGENT, require_admin, _bearer_ok)  # /v1/pos/*, promotions pause|resume, report
    for fn in extra or ():
        fn(app)
    return app

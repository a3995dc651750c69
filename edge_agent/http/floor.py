"""HTTP for the store floor: ``GET /v1/floor``, ``GET /v1/floor/map`` (associates'
token) and ``POST /v1/pickups``, ``DELETE /v1/pickups/{order_id}`` (``[pos] token``).

The handlers only parse and answer; the floor room (:mod:`edge_agent.pipeline.floor`)
decides, and the agent commits what it added before answering, so a 201 means
the order is on disk.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .base import AGENT, bearer_ok, require_associate
from edge_agent.pipeline.floor import OrderError, floor_map

MAX_ID_LEN = 64
MAX_NAME_LEN = 64



def _short_str(body: dict, key: str, limit: int, *, required: bool = False) -> str | None:
    v = body.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip() or len(v) > limit or any(ch in v for ch in "/+#\x00"):
        raise web.HTTPBadRequest(text=f"'{key}' must be a non-empty string of at most {limit} characters "
                                      f"(no '/', '+', '#')\n")
    return v.strip()


def add_routes(app: web.Application) -> None:
    """Add the floor's and the pickups' paths to ``app``."""
    agent_key = AGENT
    maps: dict[str, Any] = {}  # config version -> map (built once per version)

    def require_pos(request: web.Request) -> None:
        if not bearer_ok(request, request.app[agent_key].cfg.pos.token):
            raise web.HTTPUnauthorized(text="pos token required\n", headers={"WWW-Authenticate": "Bearer"})

    async def get_floor(request: web.Request) -> web.Response:
        require_associate(request)
        agent = request.app[agent_key]
        return web.json_response(agent.pipeline.floor.snapshot(agent.clock()))

    async def get_map(request: web.Request) -> web.Response:
        require_associate(request, allow_query=True)
        cfg = request.app[agent_key].cfg
        m = maps.get(cfg.version)
        if m is None:
            maps.clear()
            m = maps[cfg.version] = floor_map(cfg)
        return web.json_response(m, headers={"Cache-Control": "no-store"})

    async def post_pickup(request: web.Request) -> web.Response:
        require_pos(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='body must be JSON: {"order_id", "loyalty_id" | "device", "zone", '
                                          '"first_name"?}\n')
        order_id = _short_str(body, "order_id", MAX_ID_LEN, required=True)
        zone = _short_str(body, "zone", MAX_ID_LEN, required=True)
        loyalty_id = _short_str(body, "loyalty_id", 256)
        device = _short_str(body, "device", 256)
        first_name = _short_str(body, "first_name", MAX_NAME_LEN)
        if (loyalty_id is None) == (device is None):
            raise web.HTTPBadRequest(text="give exactly one of 'loyalty_id' and 'device'\n")
        agent = request.app[agent_key]
        floor = agent.touch().floor
        person = floor.loyalty_person(loyalty_id) if loyalty_id is not None else floor.person(device)
        try:
            order, created = floor.add_order(order_id, person, zone, first_name)
        except OrderError as exc:
            return web.json_response({"order_id": order_id, "error": exc.error}, status=exc.status)
        agent.commit()
        return web.json_response(order.view(), status=201 if created else 200)

    async def delete_pickup(request: web.Request) -> web.Response:
        require_pos(request)
        agent = request.app[agent_key]
        try:
            agent.touch().floor.remove_order(request.match_info["order_id"])
        except OrderError as exc:
            return web.json_response({"order_id": request.match_info["order_id"], "error": exc.error},
                                     status=exc.status)
        agent.commit()
        return web.Response(status=204)

    app.router.add_get("/v1/floor", get_floor)
    app.router.add_get("/v1/floor/map", get_map)
    app.router.add_post("/v1/pickups", post_pickup)
    app.router.add_delete("/v1/pickups/{order_id}", delete_pickup)

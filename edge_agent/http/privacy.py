"""The admin's door to privacy at rest (``edge_agent.storage.privacy``):
``DELETE /v1/admin/devices/{device}`` forgets a device, and
``GET /v1/admin/devices/{device}/export`` answers the right of access.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Callable

from aiohttp import web

from edge_agent.storage.privacy import export

def add_routes(app, agent_key, require_admin: Callable) -> None:
    """``DELETE /v1/admin/devices/{device}`` and ``GET /v1/admin/devices/{device}/export``."""
    async def forget(request: web.Request) -> web.Response:
        require_admin(request)
        agent = request.app[agent_key]
        removed = agent.forget(request.match_info["device"])
        if removed is None:
            raise web.HTTPServiceUnavailable(text="storage unavailable; nothing was forgotten, retry\n")
        pseudo = removed.pop("device")
        return web.json_response({"device": pseudo, "forgotten": pseudo, "removed": removed})

    async def export_(request: web.Request) -> web.Response:
        require_admin(request)
        agent = request.app[agent_key]
        device = request.match_info["device"]
        pseudo = agent.pseudonym(device)
        body = export(agent.ledger.conn, pseudo)
        profile, consent = agent.consent_for(device, pseudo)
        body["effective_consent"] = {"offers": consent.offers, "tracking": consent.tracking}
        body["profile"] = asdict(profile) if profile is not None else None
        return web.json_response(body, dumps=lambda o: json.dumps(o, default=list))

    app.router.add_delete("/v1/admin/devices/{device}", forget)
    app.router.add_get("/v1/admin/devices/{device}/export", export_)

"""The push webhook on the app: its sender runs while the app runs, every
commit stages into its queue, and ``POST /v1/admin/delivery/requeue``
(admin) sends the set-aside rows again.  The sender itself is
``edge_agent.transport.webhook``; its queue ``edge_agent.storage.delivery``.
"""

from __future__ import annotations

import asyncio
import sqlite3

from aiohttp import web

from edge_agent.transport.webhook import Webhook
from .base import bearer_ok

WEBHOOK: web.AppKey[Webhook] = web.AppKey("webhook", Webhook)


def setup(app: web.Application, agent_key: web.AppKey) -> None:
    """Stage into the queue in every commit; run the sender while the app runs;
    add ``POST /v1/admin/delivery/requeue``."""
    agent = app[agent_key]
    hook = app[WEBHOOK] = Webhook(agent)
    agent.stagers.append(hook.stage)

    async def sender_ctx(app: web.Application):
        agent.metrics.delivery_pending.fn = lambda: hook.table.pending() if agent.store else 0.0
        task = asyncio.create_task(hook.run(), name="delivery-webhook")
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def requeue(request: web.Request) -> web.Response:
        if not bearer_ok(request, agent.cfg.http.admin_token):
            raise web.HTTPUnauthorized(text="admin token required\n", headers={"WWW-Authenticate": "Bearer"})
        try:
            n = hook._write(lambda t: t.requeue())
        except sqlite3.Error as exc:  # rolled back: nothing requeued
            agent.storage_failed(exc)  # /readyz 503 until the ledger takes writes again
            raise web.HTTPServiceUnavailable(text="storage unavailable; nothing was requeued, retry\n") from None
        hook.wake.set()
        return web.json_response({"requeued": n})

    app.cleanup_ctx.append(sender_ctx)
    app.router.add_post("/v1/admin/delivery/requeue", requeue)

"""What every HTTP handler module shares: the app key of the agent and the
bearer-token checks.

It sits below :mod:`edge_agent.http.app` (the application), the associates'
routes (:mod:`edge_agent.http.associates`) and the vendor adapters
(:mod:`edge_agent.http.sources`), so they all reach the agent through the typed
``web.AppKey`` (STYLE.md §4) without importing the module that builds the
app — and the service, which composes the adapters, never sits in a circle.
"""

from __future__ import annotations

import asyncio

import hmac
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from edge_agent.service import Agent

AGENT: web.AppKey[Agent] = web.AppKey("agent")


def bearer_ok(request: web.Request, token: str | None, *, allow_query: bool = False) -> bool:
    """``Authorization: Bearer <token>`` (or ``?token=`` with ``allow_query``), compared in constant time."""
    if not token:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" and credentials else None
    if given is None and allow_query:
        given = request.query.get("token")
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def require_admin(request: web.Request) -> None:
    if not bearer_ok(request, request.app[AGENT].cfg.http.admin_token):
        raise web.HTTPUnauthorized(text="admin token required\n", headers={"WWW-Authenticate": "Bearer"})


def require_associate(request: web.Request, *, allow_query: bool = False) -> None:
    if not bearer_ok(request, request.app[AGENT].cfg.associates.token, allow_query=allow_query):
        raise web.HTTPUnauthorized(text="associates token required\n", headers={"WWW-Authenticate": "Bearer"})


async def close_socket(sock: web.WebSocketResponse, sender: asyncio.Task) -> None:
    """End a page's WebSocket: stop its sender task, wait for it, close the socket."""
    sender.cancel()
    try:
        await sender
    except (asyncio.CancelledError, ConnectionError):
        pass
    await sock.close()

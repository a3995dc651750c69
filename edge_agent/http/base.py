"""What every HTTP handler module shares: the agent's door (:class:`AgentPort`),
its app key, the bearer-token checks and whole-body reads.

It sits below :mod:`edge_agent.http.app` (the application), the associates'
routes (:mod:`edge_agent.http.associates`) and the vendor adapters
(:mod:`edge_agent.http.sources`), so they all reach the agent through the typed
``web.AppKey`` (STYLE.md §4) without importing the module that builds the
app — and the service, which composes the adapters, never sits in a circle.
Routes see the agent only through :class:`AgentPort`: what they use of it,
named here (the service's ``Agent`` is one), never the whole shell.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import TYPE_CHECKING, Any, Callable, Protocol

import orjson
from aiohttp import web

from edge_agent.pipeline.state import StoreView

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from sync.pseudonym import Pseudonymizer
    from edge_agent.metrics import Metrics
    from edge_agent.pipeline import Effects, Pipeline, State
    from edge_agent.pipeline.codecs import Ping
    from edge_agent.storage.ledger import Ledger
    from edge_agent.storage.store import Store
    from edge_agent.transport.mqtt import Message, MqttClient


class AgentPort(StoreView, Protocol):
    """What the routes use of the agent (the HTTP room's door to the shell)."""

    pipeline: Pipeline
    state: State
    metrics: Metrics
    ledger: Ledger | None
    store: Store | None
    mqtt: MqttClient | None
    sync: Any  # sync.tasks.Sync: its uplink's ``wake`` (readyz pokes it)
    pseudo: Pseudonymizer
    ready: bool
    clock: Callable[[], float]
    outlets: list[Callable[[str, Any], None]]  # (topic, payload) after each commit: the shop page

    def storage_ok(self) -> bool: ...

    def storage_failed(self, exc: Exception) -> None: ...  # a failed write outside commit(): /readyz 503

    def touch(self) -> Pipeline: ...

    def forget(self, device: str) -> dict[str, Any] | None: ...

    def on_batch(self, msgs: list[Message]) -> bool: ...

    def ingest_pings(self, pings: list[Ping]) -> bool: ...

    def deadletter(self, m: Message, reason: str, detail: str = "", *, device: str | None = None) -> None: ...

    def commit(self) -> bool: ...

    def commit_effects(self, fx: Effects) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


AGENT: web.AppKey[AgentPort] = web.AppKey("agent")


def given_token(request: web.Request, *, allow_query: bool = False) -> str | None:
    """The bearer token of ``Authorization`` (else ``?token=`` with ``allow_query``); a credential
    sent twice is none at all, so which of two a proxy or client put first never decides."""
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:
        return None
    scheme, _, credentials = (headers[0] if headers else "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    if not allow_query:
        return None
    tokens = request.query.getall("token", [])
    return tokens[0] if len(tokens) == 1 else None


def bearer_ok(request: web.Request, token: str | None, *, allow_query: bool = False) -> bool:
    """``Authorization: Bearer <token>`` (or ``?token=`` with ``allow_query``), compared in constant time."""
    if not token:
        return False
    given = given_token(request, allow_query=allow_query)
    # a header is decoded with surrogateescape: bytes that are no UTF-8 are a wrong token, not an error
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


def require_admin(request: web.Request) -> None:
    if not bearer_ok(request, request.app[AGENT].cfg.http.admin_token):
        raise web.HTTPUnauthorized(text="admin token required\n", headers={"WWW-Authenticate": "Bearer"})


def require_associate(request: web.Request, *, allow_query: bool = False) -> None:
    if not bearer_ok(request, request.app[AGENT].cfg.associates.token, allow_query=allow_query):
        how = (f": open {request.path}?token=... with the [associates] token of store.toml" if allow_query
               else "")
        raise web.HTTPUnauthorized(text=f"associates token required{how}\n", headers={"WWW-Authenticate": "Bearer"})


async def close_socket(sock: web.WebSocketResponse, sender: asyncio.Task) -> None:
    """End a page's WebSocket: stop its sender task, wait for it, close the socket."""
    sender.cancel()
    try:
        await sender
    except (asyncio.CancelledError, ConnectionError):
        pass
    await sock.close()


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, however many TCP segments it came in (``content.read(n)``
    returns only what has arrived); 413 past ``limit``, whatever
    ``Content-Length`` says."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks: list[bytes] = []
    n = 0
    async for chunk in request.content.iter_any():
        n += len(chunk)
        if n > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=n)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Strict JSON: 400 for anything else — deep nesting (over 1,024 levels), numbers
    beyond 64-bit integers or doubles, NaN literals, invalid UTF-8."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": "bad_json", "detail": str(exc)[:200]}),
                                 content_type="application/json") from None


async def read_json(request: web.Request, limit: int = 64 * 1024) -> Any:
    """:func:`read_body`, then :func:`parse_json`."""
    return parse_json(await read_body(request, limit))


"""A real aiohttp server playing central (docs/openapi.yaml), for sync tests.

It records events by key (and every delivery as it came), serves a bundle
with an ETag, and can be told to answer 500, 429, 400, to hang past the
agent's time-out, or to be down (``stop``; ``start`` again on the same port).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import pytest
from aiohttp import web

from tests.conftest import free_port


@dataclass
class Delivery:
    idempotency_key: str | None
    content_type: str
    keys: list[str]
    status: int
    at: float = 0.0  # time.monotonic() when central received it


@dataclass
class Central:
    token: str = "central-token"
    port: int = field(default_factory=free_port)
    events: dict[str, dict] = field(default_factory=dict)  # key -> event (first copy)
    copies: dict[str, int] = field(default_factory=dict)  # key -> times received in a 2xx batch
    deliveries: list[Delivery] = field(default_factory=list)
    script: deque = field(default_factory=deque)  # next answers: 200, 500, 429, 400, "hang", (status, headers)
    bundle: Any = None
    bundle_etag: str | None = None
    bundle_msgpack: bool = False
    bundle_requests: list[str | None] = field(default_factory=list)  # If-None-Match of each GET
    ignore_if_none_match: bool = False  # a central that always answers 200 (same body, same ETag)
    seen_idempotency: set = field(default_factory=set)
    hung: int = 0  # requests that got "hang" (counted as they arrive)

    def __post_init__(self):
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self._release = asyncio.Event()

    # -- lifecycle
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/stores/{store}/events", self._events)
        app.router.add_get("/v1/stores/{store}/bundle", self._bundle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self._release = asyncio.Event()

    async def stop(self) -> None:
        self._release.set()  # let hanging handlers finish
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # -- bundles
    def set_bundle(self, obj: Any, *, msgpack_body: bool = False) -> None:
        self.bundle = obj
        self.bundle_msgpack = msgpack_body
        self.bundle_etag = '"' + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16] + '"'

    # -- waiting
    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``pred()`` holds, re-checked after every request central serves."""
        async def loop():
            while not pred():
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(loop(), timeout)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ev in self.events.values():
            out[ev["kind"]] = out.get(ev["kind"], 0) + 1
        return out

    # -- handlers
    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        try:
            self._auth(request)
            answer = self.script.popleft() if self.script else 200
            headers: dict[str, str] = {}
            if isinstance(answer, tuple):
                answer, headers = answer
            if answer == "hang":
                self.hung += 1
                self._changed.set()
                await self._release.wait()
                raise web.HTTPServiceUnavailable()
            raw = await request.read()
            ctype = request.content_type
            body = msgpack.unpackb(raw, raw=False) if ctype == "application/msgpack" else json.loads(raw)
            keys = [e["key"] for e in body["events"]]
            idem = request.headers.get("Idempotency-Key")
            self.deliveries.append(Delivery(idem, ctype, keys, answer if isinstance(answer, int) else 0,
                                            time.monotonic()))
            if answer == 429:
                return web.Response(status=429, headers={"Retry-After": "1", **headers})
            if answer != 200:
                return web.json_response({"error": f"scripted {answer}"}, status=answer, headers=headers)
            self.seen_idempotency.add(idem)
            for e in body["events"]:
                self.copies[e["key"]] = self.copies.get(e["key"], 0) + 1
                self.events.setdefault(e["key"], e)
            return web.json_response({"accepted": len(keys)})
        finally:
            self._changed.set()

    async def _bundle(self, request: web.Request) -> web.Response:
        try:
            self._auth(request)
            inm = request.headers.get("If-None-Match")
            self.bundle_requests.append(inm)
            if self.bundle is None:
                return web.Response(status=404)
            if inm is not None and inm == self.bundle_etag and not self.ignore_if_none_match:
                return web.Response(status=304, headers={"ETag": self.bundle_etag})
            if self.bundle_msgpack:
                return web.Response(body=msgpack.packb(self.bundle), content_type="application/msgpack",
                                    headers={"ETag": self.bundle_etag})
            return web.json_response(self.bundle, headers={"ETag": self.bundle_etag})
        finally:
            self._changed.set()


# -- helpers shared by the sync tests

PRIVATE = {"x", "y", "lat", "lon", "acc", "coords", "beacons", "payload_b64", "topic"}


def sync_toml(central: Central | None, **extra) -> str:
    """``[sync]`` for tests (short intervals), transitions of anonymous devices
    recorded, and the ping clock (see :func:`walk`)."""
    keys = {"central_url": central.url, "token": central.token} if central is not None else {}
    keys.update({"interval_s": 0.2, "timeout_s": 0.5, **extra})
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
    # Test shoppers move between fences 4 s apart (ping clock), never faster than the teleport guard allows.
    return (f"\n[sync]\n{body}\n\n[privacy]\nanonymous_tracking = true\n"
            f"\n[tracking]\nclock = \"ping\"\n")


_clocks: dict[str, float] = {}  # store root -> ping time of the last ping


def _ts(R: str, step: float) -> float:
    _clocks[R] = _clocks.get(R, time.time() - 280) + step
    return _clocks[R]


async def walk(phone, R: str, device: str) -> None:
    """Entrance, then aisle-1 (4 s later, a brisk walk): enter/exit transitions and a `chips` offer."""
    await phone.publish(f"{R}/ping/uwb/{device}", {"x": 3.0, "y": 1.5, "acc": 0.5, "ts": _ts(R, 1)}, qos=0)
    await phone.publish(f"{R}/ping/uwb/{device}", {"x": 24.0, "y": 10.0, "acc": 0.5, "ts": _ts(R, 4)}, qos=0)


async def barrier(phone, R: str) -> None:
    """A dead letter after the pings proves every earlier ping was processed."""
    if f"{R}/deadletter" not in phone.queues:
        await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/ping/uwb/marker", b"not a ping", qos=0)
    await phone.next(f"{R}/deadletter")


def produced_keys(agent) -> set[str]:
    """Every event key the agent's ledger handed out in this boot ({store}:{install}:{boot}:{1..seq})."""
    led = agent.ledger
    return {f"{led.store_id}:{led.install}:{led.boot}:{i}" for i in range(1, led._seq + 1)}  # noqa: SLF001


async def until(agent, pred, timeout: float = 15.0) -> None:
    """Wait until ``pred()`` holds, re-checked whenever the sync tasks report something."""
    changed = asyncio.Event()
    agent.sync.listeners.append(lambda kind, data: changed.set())

    async def loop():
        while not pred():
            changed.clear()
            await changed.wait()
    await asyncio.wait_for(loop(), timeout)




@pytest.fixture
async def central():
    """A Central on a free port, not started (start it when the test wants central up)."""
    c = Central()
    yield c
    await c.stop()

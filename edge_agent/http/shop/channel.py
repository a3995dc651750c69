"""The page's side of the agent: which sockets listen for which device, and
the pings the pages send, batched.

The shell publishes every offer, code, refusal and notice after its commit
and hands each to :meth:`ShopChannel.outlet` (``Agent.outlets``); a message
on ``{R}/offer/{device}`` or ``{R}/notice/{device}`` goes, as the same JSON,
to every open socket of that device.  Raw device ids live only in this
in-memory registry.  Pings from the pages' sockets are collected for one
turn of the event loop and stepped as one batch (1,000 pages pinging once a
second are a few batches, not 1,000 commits).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from edge_agent.transport.mqtt import Message
from .limits import Buckets
from .sessions import Sessions

if TYPE_CHECKING:  # pragma: no cover
    from edge_agent.http.base import AgentPort

log = logging.getLogger("edge_agent.http.shop")

QUEUE = 256  # messages waiting for one slow socket before it starts over from a snapshot


class ShopChannel:
    def __init__(self, agent: "AgentPort"):
        self.agent = agent
        self.sessions: Sessions | None = None  # its key is on disk: loaded once the agent started
        self.sockets: dict[str, set[asyncio.Queue]] = {}
        root = agent.root
        self._offer = f"{root}/offer/"
        self._notice = f"{root}/notice/"
        self._batch: list[Message] = []
        self._scheduled = False
        self._limits: tuple[tuple, Buckets, Buckets] | None = None

    # -- rate limits ([http] ping_rate, ping_burst, address_rate; rebuilt when a reload changes them)
    def _buckets(self) -> tuple[Buckets, Buckets]:
        h = self.agent.cfg.http
        key = (h.ping_rate, h.ping_burst, h.address_rate)
        if self._limits is None or self._limits[0] != key:
            self._limits = (key, Buckets(h.ping_rate, h.ping_burst), Buckets(h.address_rate, 2 * h.address_rate))
        return self._limits[1], self._limits[2]

    def allow_device(self, device: str, path: str) -> bool:
        if self._buckets()[0].take(device, self.agent.clock()):
            return True
        self.agent.metrics.http_limited.inc(path, "device")
        return False

    def allow_address(self, address: str | None, path: str) -> bool:
        if self._buckets()[1].take(address or "-", self.agent.clock()):
            return True
        self.agent.metrics.http_limited.inc(path, "address")
        return False

    # -- out: after each commit (Agent.outlets)
    def outlet(self, topic: str, payload: Any) -> None:
        if not self.sockets:
            return
        if topic.startswith(self._offer):
            device = topic[len(self._offer):]
        elif topic.startswith(self._notice):
            device = topic[len(self._notice):]
        else:
            return
        for q in self.sockets.get(device, ()):
            if q.qsize() >= QUEUE:  # a stalled page: start it over from a snapshot (None)
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(None)
            else:
                q.put_nowait(payload)

    def attach(self, device: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.sockets.setdefault(device, set()).add(q)
        self.agent.metrics.shop_sockets.set(sum(map(len, self.sockets.values())))
        return q

    def detach(self, device: str, q: asyncio.Queue) -> None:
        qs = self.sockets.get(device)
        if qs is not None:
            qs.discard(q)
            if not qs:
                del self.sockets[device]
        self.agent.metrics.shop_sockets.set(sum(map(len, self.sockets.values())))

    def snapshot(self, device: str) -> list[dict[str, Any]]:
        """The device's live offers (not dismissed, not expired) and their codes, for a page that
        (re)connects; an applied offer stays while its code does (``[offers] code_ttl_s``: the till takes it)."""
        led = self.agent.ledger
        if led is None:
            return []
        now = self.agent.clock()
        rows = led.conn.execute(
            "SELECT payload, code, action FROM offers WHERE device = ? AND (expires > ? OR "
            "(code IS NOT NULL AND COALESCE(action_ts, ts) >= ?)) ORDER BY ts",
            (self.agent.pseudonym(device), now, now - self.agent.cfg.offers.code_ttl_s)).fetchall()
        out: list[dict[str, Any]] = []
        for payload, code, action in rows:
            if action == "dismiss":
                continue
            offer = {k: v for k, v in json.loads(payload).items() if not k.startswith("_")}
            out.append(offer)
            if code:
                out.append({"offer_id": offer["offer_id"], "code": code})
        return out

    # -- in: from the pages
    def submit(self, msg: Message) -> None:
        """A page's ping: stepped with the others that arrive in this loop turn."""
        self._batch.append(msg)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, []
        if batch and self.agent.store is not None:
            self.agent.on_batch(batch)

    def message(self, device: str, topic_kind: str, body: dict[str, Any], received: float) -> Message:
        """A page's message as the MQTT message it stands for (QoS 0: nothing to acknowledge)."""
        root = self.agent.root
        topic = f"{root}/ping/html5/{device}" if topic_kind == "ping" else f"{root}/{topic_kind}/{device}"
        return Message(topic, json.dumps(body, separators=(",", ":")).encode(), 0, 0, received)

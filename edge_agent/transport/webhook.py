"""Handing offers to the retailer's push service: ``[delivery] webhook_url``.

Every offer, code and notice the agent publishes for a device is also
``POST``ed to the webhook as ``{"device", "topic", "payload"}`` (the raw
device id and the MQTT topic and JSON it went out on), with headers
``Idempotency-Key`` and, with ``webhook_token``, ``Authorization: Bearer``.
The retailer's backend turns it into an APNs/FCM push for its app.

Durable: the message is written to the ``delivery`` table *in the same
commit* as the offer (or code) it carries (``Agent.stagers``), so a crash
or ``kill -9`` at any point loses nothing; a row is deleted only after a 2xx.
A crash after the 2xx and before the delete sends it again with the same
``Idempotency-Key``, so the receiver drops the duplicate.

- keys: the ``offer_id`` for an offer, ``{offer_id}:code`` for its code
  (a repeated apply sends the same code under the same key), and
  ``notice:{hash}`` for a notice (its ``notice_id`` when it has one);
- 2xx: delivered; 5xx, 408, 425, 429, time-outs and refused connections:
  retried, ``[delivery] retry_s`` (default 1 s) doubling per failure with
  jitter, capped at 30 s; any other 4xx: set aside (``aside = 1``), counted,
  logged, and sent again by ``POST /v1/admin/delivery/requeue`` (admin);
- metrics ``edge_delivery_pending`` (rows waiting, set-aside ones excluded)
  and ``edge_delivery_total{result}`` (``ok``, ``retry``, ``aside``).

Privacy: the table holds the device's pseudonym, and the raw id — which the
body must carry — only encrypted (AES-256-GCM, the row's key as associated
data) under ``{data_dir}/delivery.key``, created beside ``pseudonym.key``
(back them up together; without the key, waiting rows cannot be sent and
are set aside as ``undecryptable``).  A forgotten or opted-out device's
waiting rows are deleted with the rest of its data; set-aside rows are
deleted after ``[sync] retention_days``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
from typing import TYPE_CHECKING, Any, Callable, Protocol

import aiohttp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sync.pseudonym import load_or_create_secret

from edge_agent.pipeline.effects import Effects, Forget

from edge_agent.storage.delivery import DeliveryTable, Row
from edge_agent.storage.ledger import Ledger
from edge_agent.storage.store import Store
from store_config.model import StoreConfig

if TYPE_CHECKING:  # pragma: no cover
    from edge_agent.metrics import Metrics

log = logging.getLogger("edge_agent.transport.webhook")

KEY_FILE = "delivery.key"
RETRY_STATUSES = frozenset({408, 425, 429})
MAX_BACKOFF_S = 30.0
CONCURRENCY = 16

def backoff(failures: int, first: float, rand: float) -> float:
    """``first * 2**(failures-1)`` capped at 30 s, with equal jitter (half to all of it)."""
    d = min(MAX_BACKOFF_S, first * 2.0 ** (failures - 1))
    return d / 2 + rand * d / 2


class WebhookHost(Protocol):
    """What the webhook uses of the agent (its door): the config, the clock,
    the ledger and its store, the counters, pseudonyms and the commit's stagers."""

    ledger: Ledger | None
    store: Store | None
    metrics: "Metrics"
    clock: Callable[[], float]
    stagers: list[Callable[[Effects], None]]

    @property
    def cfg(self) -> StoreConfig: ...

    @property
    def root(self) -> str: ...

    def pseudonym(self, device: str) -> str: ...


class Webhook:
    """Stages messages into the queue in each commit and sends them from it."""

    def __init__(self, agent: WebhookHost, *, rand=random.random):
        self.agent = agent
        self.rand = rand
        self.wake = asyncio.Event()
        self.failures = 0
        self._aead: AESGCM | None = None
        root = agent.root
        self._offer = f"{root}/offer/"
        self._notice = f"{root}/notice/"

    @property
    def table(self) -> DeliveryTable:
        return self.agent.store.delivery

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(load_or_create_secret(self.agent.cfg.data_dir / KEY_FILE)[:32])
        return self._aead

    def seal(self, key: str, device: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._cipher().encrypt(nonce, device.encode(), key.encode())

    def open(self, key: str, blob: bytes) -> str:
        return self._cipher().decrypt(blob[:12], blob[12:], key.encode()).decode()

    # -- in the shell's commit (Agent.stagers)
    def stage(self, fx: Effects) -> None:
        agent = self.agent
        table = agent.store.delivery
        for r in fx.rows:
            if type(r) is Forget:
                table.forget(r.device)
        if not agent.cfg.delivery.webhook_url:
            return
        items: list[tuple[str, str, str, Any]] = []  # (key, kind, raw device, payload)
        for o in fx.offers:
            items.append((o.payload["offer_id"], "offer", o.device, o.payload))
        for p in fx.publish:
            topic, payload = p.topic, p.payload
            if topic.startswith(self._offer):
                if isinstance(payload, dict) and payload.get("code") and payload.get("offer_id"):
                    items.append((f"{payload['offer_id']}:code", "offer", topic[len(self._offer):], payload))
            elif topic.startswith(self._notice) and isinstance(payload, dict):
                device = topic[len(self._notice):]
                nid = payload.get("notice_id")
                if not isinstance(nid, str):
                    canon = json.dumps([agent.pseudonym(device), payload], sort_keys=True, default=str)
                    nid = hashlib.sha256(canon.encode()).hexdigest()[:32]
                items.append((f"notice:{nid}", "notice", device, payload))
        if not items:
            return
        agent.ledger.begin()
        now = agent.clock()
        table.put([(key, kind, agent.pseudonym(device), self.seal(key, device),
                    json.dumps(payload, separators=(",", ":")), now) for key, kind, device, payload in items])
        self.wake.set()  # the sender runs once this commit is done (same thread)

    # -- the sender
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_purge = 0.0
        async with aiohttp.ClientSession() as session:
            while True:
                self.wake.clear()
                try:
                    await self.flush(session)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception:  # the sender must outlive any surprise
                    log.exception("delivery flush failed")
                if loop.time() >= next_purge and self.agent.ledger is not None:
                    next_purge = loop.time() + 3600
                    days = self.agent.cfg.sync.retention_days
                    self._write(lambda t: t.purge_aside(self.agent.clock() - days * 86400))
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=5.0)
                except asyncio.TimeoutError:
                    pass

    def _write(self, fn) -> Any:
        led = self.agent.ledger
        led.commit()  # nothing of the agent's is open at an await point; be sure
        led.begin()
        try:
            out = fn(self.table)
            led.commit()
            return out
        except BaseException:
            led.rollback()
            raise

    async def flush(self, session: aiohttp.ClientSession) -> int:
        """Send what waits until the queue is empty or the webhook fails (then back off and go on)."""
        sent = 0
        while True:
            cfg = self.agent.cfg.delivery
            if not cfg.webhook_url or self.agent.ledger is None:
                return sent
            self.agent.ledger.commit()  # never send a row of a transaction that could still roll back
            rows = self.table.waiting(CONCURRENCY)
            if not rows:
                return sent
            results = await asyncio.gather(*(self._post(session, cfg, r) for r in rows))
            if self.agent.ledger is None:
                return sent
            ok = [r.seq for r, (res, _, _) in zip(rows, results) if res == "ok"]
            retry = [r.seq for r, (res, _, _) in zip(rows, results) if res == "retry"]
            aside = [(r, st, err) for r, (res, st, err) in zip(rows, results) if res == "aside"]
            m = self.agent.metrics.delivery

            def write(t: DeliveryTable) -> None:
                t.delete(ok)
                t.attempted(retry)
                for r, st, err in aside:
                    t.set_aside(r.seq, st, err)

            self._write(write)
            sent += len(ok)
            for res, n in (("ok", len(ok)), ("retry", len(retry)), ("aside", len(aside))):
                if n:
                    m.inc(res, n=n)
            for r, st, err in aside:
                log.error("push webhook refused %s (HTTP %s: %s); set aside — POST /v1/admin/delivery/requeue "
                          "sends it again", r.key, st, err[:200])
            if retry:
                self.failures += 1
                d = backoff(self.failures, cfg.retry_s, self.rand())
                log.info("push webhook unavailable; retrying %d messages in %.1f s", len(retry), d)
                await asyncio.sleep(d)
            else:
                self.failures = 0

    async def _post(self, session: aiohttp.ClientSession, cfg, row: Row) -> tuple[str, int | None, str]:
        """POST one message; returns ("ok" | "retry" | "aside", HTTP status, error text)."""
        try:
            device = self.open(row.key, row.device_enc)
        except (InvalidTag, ValueError):
            return "aside", None, "undecryptable: delivery.key changed or lost"
        body = ('{"device":%s,"topic":%s,"payload":%s}' % (
            json.dumps(device), json.dumps(f"{self.agent.root}/{row.kind}/{device}"), row.payload)).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": row.key}
        if cfg.webhook_token:
            headers["Authorization"] = f"Bearer {cfg.webhook_token}"
        try:
            async with session.post(cfg.webhook_url, data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as resp:
                status = resp.status
                text = (await resp.content.read(1024)).decode("utf-8", "replace")
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            return "retry", None, type(exc).__name__
        if 200 <= status < 300:
            return "ok", status, ""
        if status >= 500 or status in RETRY_STATUSES:
            return "retry", status, text
        return "aside", status, text

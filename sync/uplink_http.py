"""The HTTP uplink: the outbox, in order, to ``POST {central_url}/v1/stores/{store}/events``.

One batch is in flight at a time and batches go in ``seq`` order, so every
device's events reach central in the order they happened.  A batch is
retried as the same batch (same events, same ``Idempotency-Key``) until
central answers:

* 2xx — the batch is acknowledged: its rows are deleted;
* 5xx, 408, 425, 429, time-outs, connection errors — retried with
  exponential backoff from 1 s with jitter, capped at 30 s (a ``Retry-After``
  on any of them is honoured, up to the same 30 s cap);
* any other 4xx — 401, 403 and 404 included, as the contract says — the
  batch is set aside (``outbox_aside``, with the status
  and central's answer), counted in ``edge_sync_errors_total{kind="rejected"}``
  and ``edge_outbox_set_aside``, logged, and the next batch goes.  For
  401/403/404 the log says to check ``[sync] central_url`` and ``token``;
  once fixed, ``POST /v1/admin/outbox/requeue`` puts every set-aside event
  back in the outbox (in its original order), so a wrong token parks events
  but never loses them.

All SQLite work runs on the loop thread on the agent's ledger connection,
each in its own short transaction.  Nothing is kept in memory that is not
also in SQLite, so a restart resumes where the last acknowledged batch ended.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from .wire import encode, idempotency_key, outgoing

if TYPE_CHECKING:  # pragma: no cover
    from .host import SyncHost

log = logging.getLogger("sync.uplink")

RETRY_STATUSES = frozenset({408, 425, 429})
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 30.0  # the contract caps retries at 30 s, Retry-After included


def backoff_delay(failures: int, rand: float) -> float:
    """Delay before retry number ``failures`` (1, 2, ...): ``min(30, 2**(n-1))``
    seconds with "equal jitter" (between half and all of it)."""
    d = min(MAX_BACKOFF_S, 2.0 ** (failures - 1))
    return d / 2 + rand * d / 2


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - now)


class HttpUplink:
    """Flushes the outbox to central every ``[sync] interval_s`` (sooner when
    a full batch is waiting)."""

    def __init__(self, sync: "SyncHost", *, rand=random.random):
        self.sync = sync
        self.rand = rand
        self.failures = 0
        self._inflight: list[int] = []
        self.wake = asyncio.Event()

    @property
    def url(self) -> str:
        cfg = self.sync.cfg
        return f"{cfg.sync.central_url.rstrip('/')}/v1/stores/{cfg.store_id}/events"

    async def run(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        next_flush = 0.0
        while True:
            sc = self.sync.cfg.sync
            if loop.time() >= next_flush or self.sync.store.outbox.pending() >= sc.batch_size:
                try:
                    await self.flush(session)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception:  # the uplink must outlive any surprise
                    log.exception("outbox flush failed")
                next_flush = loop.time() + sc.interval_s
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=min(sc.interval_s, 1.0))
            except asyncio.TimeoutError:
                pass

    def _next_batch(self) -> list[tuple[int, dict[str, Any]]]:
        led = self.sync.store
        led.commit()  # never read (and send) rows of a transaction that could still roll back
        rows: list[tuple[int, dict[str, Any]]] = []
        if self._inflight:
            rows = led.outbox.still_pending(self._inflight)
        if not rows:
            rows = led.outbox.peek(self.sync.cfg.sync.batch_size)
        self._inflight = [seq for seq, _ in rows]
        return rows

    async def flush(self, session: aiohttp.ClientSession) -> int:
        """Send batches until the outbox is empty (or central fails: then back
        off and retry the same batch).  Returns the number of events acknowledged."""
        sent = 0
        while True:
            rows = self._next_batch()
            if not rows:
                return sent
            result, delay = await self._send(session, rows)
            seqs = [seq for seq, _ in rows]
            if result == "ok":
                self.sync.write(lambda led: led.outbox.delete(seqs))
                self._inflight = []
                self.failures = 0
                sent += len(seqs)
                self.sync.metrics.last_sync.set(self.sync.clock())
                self.sync.notify("delivered", {"events": len(seqs), "transport": "http"})
            elif result == "aside":
                self._inflight = []
                self.failures = 0
                self.sync.notify("set_aside", {"events": len(seqs)})
            else:
                self.failures += 1
                d = backoff_delay(self.failures, self.rand())
                if delay is not None:
                    d = max(d, min(delay, MAX_RETRY_AFTER_S))
                log.info("central unavailable (%s); retrying %d events in %.1f s", result, len(seqs), d)
                await asyncio.sleep(d)

    async def _send(self, session: aiohttp.ClientSession,
                    rows: list[tuple[int, dict[str, Any]]]) -> tuple[str, float | None]:
        """POST one batch; returns ("ok" | "aside" | error kind, Retry-After seconds)."""
        sync = self.sync
        sc = sync.cfg.sync
        events = [outgoing(body) for _, body in rows]
        data, ctype = encode({"events": events}, sc.encoding)
        headers = {"Content-Type": ctype, "Idempotency-Key": idempotency_key(events, sync.store.outbox.requeues())}
        if sc.token:
            headers["Authorization"] = f"Bearer {sc.token}"
        errors = sync.metrics.sync_errors
        try:
            async with session.post(self.url, data=data, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=sc.timeout_s)) as resp:
                status = resp.status
                text = (await resp.content.read(1024)).decode("utf-8", "replace")
                ra = retry_after(resp.headers.get("Retry-After"), time.time())
        except asyncio.TimeoutError:
            errors.inc("timeout")
            return "timeout", None
        except (aiohttp.ClientError, OSError) as exc:
            errors.inc("connection")
            log.debug("central unreachable: %s", exc)
            return "connection", None
        if 200 <= status < 300:
            return "ok", None
        if status >= 500:
            errors.inc("http_5xx")
            return f"HTTP {status}", ra
        if status in RETRY_STATUSES:
            errors.inc(f"http_{status}")
            return f"HTTP {status}", ra
        if status in (401, 403, 404):
            errors.inc("auth" if status in (401, 403) else "http_404")
            log.error("central answered %d to %s: check [sync] central_url and token; the batch is set aside "
                      "(POST /v1/admin/outbox/requeue sends it again)", status, self.url)
        # Any other 4xx: central will never take this batch as it is. Keep it aside, go on.
        now = sync.clock()
        sync.write(lambda led: led.outbox.set_aside([seq for seq, _ in rows], status=status,
                                                         error=text[:1000], now=now))
        errors.inc("rejected")
        log.error("central refused a batch of %d events (keys %s .. %s) with HTTP %d: %s; set aside in "
                  "outbox_aside", len(rows), events[0]["key"], events[-1]["key"], status, text[:200])
        return "aside", None

"""Sync with central: the uplink, the downlink and the outbox's housekeeping
as the agent's long-lived tasks (one place to start and stop them).

``Agent.start`` calls :meth:`Sync.load_saved_bundle` before it serves and
:meth:`Sync.start` once it runs; ``Agent.stop`` calls :meth:`Sync.stop`
before it closes the ledger.  Which tasks run:

* housekeeping (always): the outbox bound every ``interval_s``, retention
  at start and hourly (:mod:`sync.retention`);
* the uplink when ``[sync] central_url`` is set (``transport = "http"``) or
  ``transport = "mqtt"`` (``mqtt_url``);
* the downlink when ``central_url`` is set.

``listeners`` get ``(kind, data)`` for ``delivered``, ``set_aside``,
``bundle`` and ``shed`` — for tests and operators' tooling.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any, Callable

import aiohttp

from .downlink import Downlink
from .retention import enforce_bound, purge
from .uplink_http import HttpUplink
from .uplink_mqtt import MqttUplink

log = logging.getLogger("sync")

RETENTION_EVERY_S = 3600.0


async def cancel_and_wait(tasks: list[asyncio.Task], logger: logging.Logger) -> None:
    """Cancel long-lived tasks and wait for each; a task that had already died
    of an exception is logged, never allowed to abort the caller's shutdown."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("task %s failed while stopping", t.get_name())
    tasks.clear()


class Sync:
    def __init__(self, agent):
        self.agent = agent
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.downlink = Downlink(self)
        self.uplink: HttpUplink | MqttUplink | None = None
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._stuck_logged = False

    def notify(self, kind: str, data: dict[str, Any]) -> None:
        for fn in self.listeners:
            try:
                fn(kind, data)
            except Exception:
                log.exception("sync listener failed")

    def write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(ledger)`` in its own short transaction on the agent's
        connection (loop thread); rolled back if it fails."""
        led = self.agent.ledger
        led.commit()  # nothing of the agent's is open at an await point; be sure
        led.begin()
        try:
            out = fn(led)
            led.commit()
            return out
        except BaseException:
            try:
                led.rollback()
            except sqlite3.Error:
                led._in_tx = False  # noqa: SLF001 - the connection already rolled back
            raise

    def load_saved_bundle(self) -> bool:
        return self.downlink.load_saved()

    async def start(self) -> None:
        agent = self.agent
        sc = agent.cfg.sync
        agent.metrics.outbox_aside.fn = lambda: agent.ledger.outbox.aside_count() if agent.ledger else 0
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="sync-housekeeping"))
        if sc.central_url or sc.transport == "mqtt":
            self._session = aiohttp.ClientSession()
        if sc.transport == "mqtt" and sc.mqtt_url:
            self.uplink = MqttUplink(self)
            self._tasks.append(asyncio.create_task(self.uplink.run(), name="sync-uplink-mqtt"))
        elif sc.central_url:
            self.uplink = HttpUplink(self)
            self._tasks.append(asyncio.create_task(self.uplink.run(self._session), name="sync-uplink-http"))
        if sc.central_url:
            self._tasks.append(asyncio.create_task(self.downlink.run(self._session), name="sync-downlink"))
        log.info("sync: uplink %s, downlink %s, outbox bound %.1f MB, retention %g days",
                 "none" if self.uplink is None else sc.transport, "on" if sc.central_url else "off",
                 sc.max_outbox_mb, sc.retention_days)

    async def stop(self, *, final_flush_s: float = 5.0) -> None:
        """Stop the sync tasks; with an HTTP uplink, first try one last flush
        of the outbox (bounded: what central does not take stays in SQLite)."""
        await cancel_and_wait(self._tasks, log)
        if (isinstance(self.uplink, HttpUplink) and self._session is not None and self.agent.ledger is not None
                and final_flush_s > 0):
            try:
                self.agent.ledger.commit()
                if self.agent.ledger.outbox.pending():
                    # central already failing: one quick try, don't hold the shutdown up
                    budget = min(final_flush_s, 1.0) if self.uplink.failures else final_flush_s
                    sent = await asyncio.wait_for(self.uplink.flush(self._session), budget)
                    log.info("final outbox flush: %d events delivered", sent)
            except asyncio.TimeoutError:
                log.warning("final outbox flush timed out; %d events stay in the outbox for the next start",
                            self.agent.ledger.outbox.pending())
            except Exception:
                log.exception("final outbox flush failed; the events stay in the outbox")
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- housekeeping
    def enforce_bound(self) -> dict[str, int]:
        agent = self.agent
        res = self.write(lambda led: enforce_bound(led.outbox, agent.cfg.sync.max_outbox_mb * 1024 * 1024))
        for kind, n in res.dropped.items():
            agent.metrics.outbox_shed.inc(kind, n=n)
        if res.dropped:
            log.warning("outbox over its bound (%.1f MB estimated, max %.1f MB): shed %s",
                        res.size_before / 1048576, agent.cfg.sync.max_outbox_mb,
                        ", ".join(f"{n} {k}" for k, n in sorted(res.dropped.items())))
            self.notify("shed", dict(res.dropped))
        if res.stuck and not self._stuck_logged:
            log.error("outbox over its bound with only events that are never shed (redemptions, dismissals, "
                      "consent changes); keeping them all")
        self._stuck_logged = res.stuck
        return res.dropped

    def retention(self, now: float | None = None) -> dict[str, int]:
        agent = self.agent
        now = agent.clock() if now is None else now
        horizon = max([p.cooldown_s for p in agent.cfg.promotions] + [86400.0])
        counts = self.write(lambda led: purge(led.conn, now=now, retention_s=agent.cfg.sync.retention_days * 86400.0,
                                              keep_offers_s=horizon,
                                              position_retention_s=agent.cfg.privacy.position_retention_s))
        if any(counts.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} {k} rows" for k, n in counts.items() if n))
        return counts

    async def _housekeeping(self) -> None:
        last_retention = -RETENTION_EVERY_S
        while True:
            try:
                if self.agent.ledger is not None:
                    self.enforce_bound()
                    if time.monotonic() - last_retention >= RETENTION_EVERY_S:
                        last_retention = time.monotonic()
                        self.retention()
            except Exception:
                log.exception("outbox housekeeping failed")
            await asyncio.sleep(min(self.agent.cfg.sync.interval_s, 5.0))

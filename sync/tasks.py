"""Sync with central: the uplink, the downlink and the outbox's housekeeping
as the agent's long-lived tasks (one place to start and stop them).

The composition root (``edge_agent/service.py``) builds :class:`Sync` from
the few objects it needs (:mod:`sync.host`: the config in force, the SQLite
store with the outbox, the metrics it updates, the clock, the callback that
installs a bundle, and the MQTT client class for ``transport = "mqtt"``), so
``sync/`` never imports ``edge_agent``.  ``Agent.start`` calls
:meth:`Sync.load_saved_bundle` before it serves and :meth:`Sync.start` once
it runs; ``Agent.stop`` calls :meth:`Sync.stop` before it closes the ledger.
Which tasks run:

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
import time
from typing import Any, Callable

import aiohttp

from store_config.model import StoreConfig

from .downlink import Downlink
from .host import MqttClientFactory, SyncMetrics, SyncStore
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
    """The sync tasks of one agent; implements :class:`sync.host.SyncHost` for its parts.

    ``config`` returns the configuration in force; ``store`` is open for the
    whole life of this object (from before :meth:`load_saved_bundle` until
    after :meth:`stop`); ``install(cfg, inventory_ts=...)`` swaps in a
    bundle's configuration; ``mqtt_client`` builds the uplink's client
    (needed only with ``[sync] transport = "mqtt"``)."""

    def __init__(self, *, config: Callable[[], StoreConfig], store: SyncStore, metrics: SyncMetrics,
                 clock: Callable[[], float], install: Callable[..., None],
                 mqtt_client: MqttClientFactory | None = None):
        self._config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.install = install
        self.mqtt_client = mqtt_client
        self._stopped = False
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.downlink = Downlink(self)
        self.uplink: HttpUplink | MqttUplink | None = None
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._stuck_logged = False

    @property
    def cfg(self) -> StoreConfig:
        return self._config()

    def notify(self, kind: str, data: dict[str, Any]) -> None:
        for fn in self.listeners:
            try:
                fn(kind, data)
            except Exception:
                log.exception("sync listener failed")

    def write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(store)`` in its own short transaction on the agent's
        connection (loop thread); rolled back if it fails."""
        led = self.store
        led.commit()  # nothing of the agent's is open at an await point; be sure
        led.begin()
        try:
            out = fn(led)
            led.commit()
            return out
        except BaseException:
            led.rollback()  # tolerates a connection that already rolled back
            raise

    def load_saved_bundle(self) -> bool:
        return self.downlink.load_saved()

    def _aside_count(self) -> int:
        return 0 if self._stopped else self.store.outbox.aside_count()

    async def start(self) -> None:
        sc = self.cfg.sync
        self.metrics.outbox_aside.fn = self._aside_count
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="sync-housekeeping"))
        if sc.central_url or sc.transport == "mqtt":
            self._session = aiohttp.ClientSession()
        if sc.transport == "mqtt" and sc.mqtt_url:
            if self.mqtt_client is None:
                raise TypeError('[sync] transport = "mqtt" needs Sync(mqtt_client=...), a client factory')
            self.uplink = MqttUplink(self)
            self._tasks.append(asyncio.create_task(self.uplink.run(), name="sync-uplink-mqtt"))
        elif sc.central_url:
            self.uplink = HttpUplink(self)
            self._tasks.append(asyncio.create_task(self.uplink.run(self._session), name="sync-uplink-http"))
        if sc.central_url:
            self._tasks.append(asyncio.create_task(self.downlink.run(self._session), name="sync-downlink"))
        log.info("uplink %s, downlink %s, outbox bound %.1f MB, retention %g days",
                 "none" if self.uplink is None else sc.transport, "on" if sc.central_url else "off",
                 sc.max_outbox_mb, sc.retention_days)

    async def stop(self, *, final_flush_s: float = 5.0) -> None:
        """Stop the sync tasks; with an HTTP uplink, first try one last flush
        of the outbox (bounded: what central does not take stays in SQLite)."""
        await cancel_and_wait(self._tasks, log)
        await self.downlink.saved()  # a bundle applied just before the stop is saved too
        if isinstance(self.uplink, HttpUplink) and self._session is not None and final_flush_s > 0:
            try:
                self.store.commit()
                if self.store.outbox.pending():
                    # central already failing: one quick try, don't hold the shutdown up
                    budget = min(final_flush_s, 1.0) if self.uplink.failures else final_flush_s
                    sent = await asyncio.wait_for(self.uplink.flush(self._session), budget)
                    log.info("final outbox flush: %d events delivered", sent)
            except asyncio.TimeoutError:
                log.warning("final outbox flush timed out; %d events stay in the outbox for the next start",
                            self.store.outbox.pending())
            except Exception:
                log.exception("final outbox flush failed; the events stay in the outbox")
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._stopped = True  # the store closes next: edge_outbox_set_aside reads 0 from here on

    # -- housekeeping
    def enforce_bound(self) -> dict[str, int]:
        max_mb = self.cfg.sync.max_outbox_mb
        res = self.write(lambda led: enforce_bound(led.outbox, max_mb * 1024 * 1024))
        for kind, n in res.dropped.items():
            self.metrics.outbox_shed.inc(kind, n=n)
        if res.dropped:
            log.warning("outbox over its bound (%.1f MB estimated, max %.1f MB): shed %s",
                        res.size_before / 1048576, max_mb,
                        ", ".join(f"{n} {k}" for k, n in sorted(res.dropped.items())))
            self.notify("shed", dict(res.dropped))
        if res.stuck and not self._stuck_logged:
            log.error("outbox over its bound with only events that are never shed (redemptions, dismissals, "
                      "consent changes); keeping them all")
        self._stuck_logged = res.stuck
        return res.dropped

    def retention(self, now: float | None = None) -> dict[str, int]:
        cfg = self.cfg
        now = self.clock() if now is None else now
        horizon = max([p.cooldown_s for p in cfg.promotions] + [86400.0])
        counts = self.write(lambda led: purge(led.conn, now=now, retention_s=cfg.sync.retention_days * 86400.0,
                                              keep_offers_s=horizon,
                                              position_retention_s=cfg.privacy.position_retention_s))
        if any(counts.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} {k} rows" for k, n in counts.items() if n))
        return counts

    async def _housekeeping(self) -> None:
        last_retention = -RETENTION_EVERY_S
        while True:
            try:
                self.enforce_bound()
                if time.monotonic() - last_retention >= RETENTION_EVERY_S:
                    last_retention = time.monotonic()
                    self.retention()
            except Exception:
                log.exception("outbox housekeeping failed")
            await asyncio.sleep(min(self.cfg.sync.interval_s, 5.0))

"""The agent: the imperative shell around the pure pipeline.

Per batch of MQTT messages (a single ping is a batch of one):

1. the transport drains its socket into one batch (``mqtt.MqttClient``);
2. :meth:`Pipeline.step <edge_agent.pipeline.Pipeline.step>` decodes,
   positions, matches, tracks and decides — no I/O — and returns effects;
3. the shell writes the effects' rows (ledger, audit, consent, inventory,
   outbox) and **commits once**;
4. then publishes offers (QoS 1; a crash can repeat an offer id, never send
   a second offer), codes, alerts and dead letters, tells listeners, and
   acknowledges the batch's QoS 1 actions / consent / inventory.

A storage failure between 2 and 3 withholds the batch's offers and keeps its
QoS 1 messages to retry.  This module also owns the lifecycle: storage, the
transport, the ticker, config reloads and sync.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

from paho.mqtt.client import topic_matches_sub as topic_matches

from store_config.model import Consent, Profile, StoreConfig
from sync.pseudonym import Pseudonymizer, load_or_create_secret
from sync.tasks import Sync, cancel_and_wait

from .http import sources
from .storage.campaigns import restore_histories
from .pipeline.codecs import Ping
from .pipeline.guard import SpoofGuard
from .instance import lock_data_dir, unlock
from .storage.ledger import Ledger
from .metrics import Metrics, Stages
from .transport.mqtt import Message, MqttClient
from .transport.offers import OfferWire, dumps
from .pipeline import Effects, Pipeline, State, build_runtime
from .storage.privacy import TopicSealer
from .reload import Reloader, file_mtime
from .storage.store import Store, error_kind, open_ledger, row_error, set_aside

log = logging.getLogger("edge_agent")
OWNTRACKS_FILTER = "owntracks/+/+"  # [ingest] owntracks = true subscribes to it


def with_owntracks(subs: list[tuple[str, int]], on: bool) -> list[tuple[str, int]]:
    """The subscriptions with ``owntracks/+/+`` (QoS 0) when ``on``, without it otherwise."""
    subs = [s for s in subs if s[0] != OWNTRACKS_FILTER]
    return subs + [(OWNTRACKS_FILTER, 0)] if on else subs


__all__ = ["Agent", "build_runtime", "open_ledger"]


def freeze_heap() -> None:
    """Collect once, then move every object alive into the collector's permanent
    generation (``gc.freeze``), where a collection no longer scans it.

    After start-up the heap holds ~60,000 tracked objects (modules, the config,
    the fence index, aiohttp) that live as long as the process; every full
    collection walked them all and stopped the loop for 16-27 ms, every few
    seconds at 5,000 pings/s (BENCHMARKS.md section 13).  Objects frozen stay
    freed by reference counting; only a cycle among them would wait for the
    next :meth:`Agent.install`, which unfreezes and collects."""
    gc.collect()
    gc.freeze()


def restore(pipeline: Pipeline, store: Store, now: float) -> None:
    """Rebuild cooldowns, caps, consent and inventory from the store after a restart."""
    st, cfg = pipeline.state, pipeline.cfg
    horizon = max([p.cooldown_s for p in cfg.promotions] + [86400.0])
    # per person: offers count towards caps, holdouts cool a promotion down too
    restore_histories(st, store.campaigns, store.ledger, since=now - horizon, now=now, tz=st.rt.tz)
    st.campaign = store.campaigns.load_state()  # budgets and pause overrides
    for promo in cfg.promotions:
        pipeline.offering.update_budget_gauge(promo)
    st.consents.update(store.consent.load())
    for sku, qty, ts in store.inventory.load():
        if ts >= st.inventory.get(sku, (0, 0.0))[1]:
            st.set_inventory(sku, qty, ts)
    pipeline.floor.restore(store.pickups.load())  # click-and-collect orders still waiting


class Agent:
    """The edge agent for one store: composes storage, transport and pipeline."""

    def __init__(self, cfg: StoreConfig, *, clock: Callable[[], float] = time.time,
                 client_id: str | None = None):
        self.clock = clock
        self.metrics = Metrics()
        self.metrics.config_info.set(1, cfg.version)
        self.pseudo: Pseudonymizer | None = None  # its key is on disk: set in start()
        self.state = State(build_runtime(cfg), pseudonym=self.pseudonym, fraction=self._fraction,
                           guard=SpoofGuard(cfg.tracking.max_speed_mps))
        self.state.newer_inventory(cfg.inventory, file_mtime(cfg, "inventory") or 0.0)
        self.pipeline = Pipeline(self.state, metrics=self.metrics, offers=self)
        self.pipeline.alerts.commit = self.commit
        self.reloader = Reloader(self)
        self.client_id = client_id or cfg.mqtt.client_id or f"edge-agent-{cfg.store_id}"
        self.mqtt: MqttClient | None = None
        self.stages: Stages | None = None  # [ingest] stages: where a batch's milliseconds go (metrics.Stages)
        self.ledger: Ledger | None = None
        self.store: Store | None = None
        self.sync: Sync | None = None  # uplink, downlink, outbox housekeeping (sync/tasks.py)
        self._retry: list[Message] = []  # QoS 1 messages whose batch failed to commit
        self._storage_down = False
        self._unsettled = False  # a batch's second commit failed: its pending record waits (_settle)
        self.wire = OfferWire(config=lambda: self.cfg, metrics=self.metrics, clock=clock)  # offers until PUBACK
        self._tasks: list[asyncio.Task] = []
        self._lock: int | None = None  # the data dir's lock (edge_agent.instance)
        self.ready = False
        self.listeners: list[Callable[[str, dict], None]] = []  # (kind, data) for demo / page
        self.stagers: list[Callable[[Effects], None]] = []  # more rows for each commit: the push webhook's queue
        self.outlets: list[Callable[[str, Any], None]] = []  # (topic, payload) after each commit: the shop page

    # -- what the rest of the service reads: the pipeline's own state, one attribute away
    rt = property(lambda self: self.pipeline.rt)
    cfg = property(lambda self: self.pipeline.cfg)
    root = property(lambda self: self.pipeline.root)
    alerts = property(lambda self: self.pipeline.alerts)
    tracks = property(lambda self: self.state.tracks)
    histories = property(lambda self: self.state.histories)
    consents = property(lambda self: self.state.consents)
    inventory = property(lambda self: self.state.inventory)

    def pseudonym(self, device: str) -> str:
        return self.pseudo.device(device)

    @property
    def storage_ok(self) -> bool:
        """False from a failed write until the ledger takes writes again (``/readyz``)."""
        return not self._storage_down

    def _fraction(self, pseudo: str, *parts: str) -> float:
        return self.pseudo.fraction(pseudo, *parts)

    def consent_for(self, device: str, pseudo: str) -> tuple[Profile | None, Consent]:
        return self.state.consent_for(device, pseudo)

    def get_offer(self, offer_id: str):
        return self.ledger.get_offer(offer_id)

    def touch(self) -> Pipeline:
        """Set the pipeline's time for a change made outside a batch (HTTP, reload)."""
        self.pipeline.wall = self.clock()
        return self.pipeline

    # -- config
    def install(self, cfg: StoreConfig, *, inventory_ts: float | None = None) -> None:
        """Swap in a validated config atomically (index built once per version).

        ``cfg.inventory`` is merged per sku with ``inventory_ts`` as its time
        (newest wins); without it, only skus not known yet are taken."""
        if cfg.store_id != self.cfg.store_id:
            raise ValueError("a reload cannot change the store id")
        frozen = gc.get_freeze_count()
        if frozen:
            gc.unfreeze()  # the replaced config's reference cycles become collectable again
        self.merge_inventory(cfg.inventory, inventory_ts)
        self.pipeline.install(cfg, self.clock())
        if self.mqtt is not None:  # [ingest] owntracks turned on or off: owntracks/+/+ follows it
            self.mqtt.resubscribe(with_owntracks(self.mqtt.subscriptions, cfg.ingest.owntracks))
        if frozen:
            freeze_heap()
        if self.store is not None:
            self.commit()
        else:
            self.pipeline.take()  # before start: nothing is stored yet
        self.metrics.config_info.values.clear()
        self.metrics.config_info.set(1, cfg.version)
        log.info("config version %s live: %d fences, %d promotions, %d profiles",
                 cfg.version, len(cfg.fences), len(cfg.promotions), len(cfg.profiles))

    def reload_from_files(self) -> tuple[bool, list[str]]:
        """Reload the config files now (SIGHUP, ``POST /v1/admin/reload``); see ``reload.py``."""
        return self.reloader.reload("request")

    def merge_inventory(self, items, ts: float | None) -> list[str]:
        """Take ``{sku: qty}`` as of ``ts``: per sku the newest value wins (a tie
        goes to the later arrival).  ``ts=None`` only fills skus not known yet.
        Returns the skus whose value was taken; a promoted sku run out raises
        ``stock_out`` (published with the next commit)."""
        if self.store is None:
            return [sku for sku, _, _ in self.state.newer_inventory(items, ts)]
        return self.pipeline.control.merge_inventory(items, ts, self.clock())

    # -- lifecycle
    async def start(self) -> None:
        cfg = self.cfg
        data = Path(cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self._lock = lock_data_dir(data)  # before anything else: a second agent stops here
        self.pseudo = Pseudonymizer(load_or_create_secret(data / "pseudonym.key"))
        self.state.loyalty = self.pseudo.person
        self.sealer = TopicSealer.for_data_dir(data)  # offers' topics at rest (privacy.py)
        # A ledger that cannot be written stops the start here (StorageUnwritable: one line, exit 2);
        # a corrupt one is moved aside and a fresh one started (store.open_ledger).
        self.ledger, self.store = open_ledger(data / "edge.sqlite3", store_id=cfg.store_id, sealer=self.sealer,
                                              on_corrupt=lambda: self.metrics.storage_errors.inc("corrupt"),
                                              on_dropped=self.metrics.internal_errors.inc)
        self.ledger.checkpoint_in_thread()  # never in a commit on the loop (storage/ledger.py)
        self.pipeline.shell_errors = (sqlite3.Error,)  # a storage error in the step fails the batch, for a retry
        self._settle()  # records a crash left pending, before the restore: cooldowns and caps count them
        restore(self.pipeline, self.store, self.clock())
        self.sync = Sync(config=lambda: self.cfg, store=self.ledger, metrics=self.metrics, clock=self.clock,
                         install=self.install, mqtt_client=MqttClient)
        self.sync.load_saved_bundle()  # the last good bundle from central, before serving
        self.metrics.outbox_pending.fn = self.ledger.outbox.pending
        self.metrics.broker_connected.fn = lambda: 1.0 if self.mqtt and self.mqtt.connected.is_set() else 0.0
        self.metrics.tracked_devices.fn = lambda: len(self.state.tracks)
        self.metrics.commit_seconds.fn = lambda: self.ledger.last_commit_s if self.ledger else 0.0
        self.metrics.storage_ok.fn = lambda: 0.0 if self._storage_down else 1.0
        # ping/#: a ping topic with extra levels becomes a dead letter (reason "topic"), not silence
        subs = with_owntracks([(f"{self.root}/ping/#", 0), (f"{self.root}/action/+", 1), (f"{self.root}/consent/+", 1),
                               (f"{self.root}/inventory", 1), (f"{self.root}/alert/claim", 1)], cfg.ingest.owntracks)
        routes = sources.mqtt_routes(self)  # vendor feeds over MQTT (Aruba ALE)
        self.pipeline.source_routes = [(partial(topic_matches, flt), decode) for flt, _, decode in routes]
        subs += [(flt, qos) for flt, qos, _ in routes]
        if cfg.ingest.stages:  # the transport stamps read, handed and written; the pipeline decoded
            self.stages = Stages(self.metrics).around(self.pipeline)
        self.mqtt = self.wire.mqtt = MqttClient(cfg.mqtt, client_id=self.client_id, subscriptions=subs,
                               on_batch=self.on_batch, status_topic=f"{self.root}/status",
                               on_connected=self._on_connected, on_published=self.wire.on_published,
                               clock=self.clock, stages=self.stages)
        await self.mqtt.start()
        self._tasks.append(asyncio.create_task(self._ticker(), name="tracker-tick"))
        if cfg.path is not None:
            self._tasks.append(asyncio.create_task(self.reloader.run(), name="config-reload"))
        await self.sync.start()
        self.ready = True
        log.info("agent for store %s (%s) started; broker %s", cfg.store_id, cfg.name, cfg.mqtt.url)

    async def stop(self) -> None:
        self.ready = False
        await cancel_and_wait(self._tasks, log)
        if self.sync is not None:
            await self.sync.stop()
        if self.mqtt:
            await self.mqtt.stop()
        if self.ledger:
            self._settle()  # what is still pending, and the offers acknowledged since the last commit
            self.ledger.close()
            self.ledger = None
            self.store = None
        if self._lock is not None:
            unlock(self._lock)
            self._lock = None
        log.info("agent stopped")

    def _on_connected(self) -> None:
        if self.ledger:
            self.wire.resend(self.ledger, self.sealer)

    # -- the batch entry points
    def on_batch(self, msgs: list[Message]) -> bool:
        """Handle one batch; QoS 1 messages are acknowledged after its commit.

        A storage failure (disk full, locked, I/O error) rolls the batch back:
        its offers are not published (never an offer without a record) and its
        QoS 1 messages are kept and retried every second until storage works (False)."""
        self.metrics.queue_depth.set(len(msgs) + len(self._retry))
        if self._unsettled:
            self._settle()  # rows still pending first: this batch's actions may name their offers
        try:
            fx = self.pipeline.step(msgs, self.clock())
        except sqlite3.Error as exc:  # reading the ledger (an action's offer)
            self.storage_failed(exc, msgs, self.pipeline.take())
            return False
        if (st := self.stages) is not None:
            st.mark(3)  # stepped
        if (ok := self._commit(fx, msgs)) and st is not None:
            st.end(len(msgs), len(fx.offers), bool(fx.offers or fx.publish or fx.acks))
        return ok

    def ingest_pings(self, pings: list[Ping]) -> bool:
        """Run already-decoded pings (vendor adapters: Meraki, Aruba) through
        the same pipeline as MQTT pings, then commit and publish once (False:
        storage failed)."""
        return self._commit(self.pipeline.ingest(pings, self.clock()))

    def deadletter(self, m: Message, reason: str, detail: str = "", *, device: str | None = None) -> None:
        """A payload a vendor adapter could not use (committed with the next batch)."""
        self.pipeline.deadletter(m.topic, m.payload, m.received, reason, detail, device=device)

    def commit(self) -> bool:
        """Commit and publish what was collected outside a batch (claims, reloads, forgets,
        pauses, pickups); False when storage failed — then nothing of it stays in memory
        either, and an HTTP caller answers 503."""
        return self._commit(self.pipeline.take())

    def commit_effects(self, fx: Effects) -> bool:
        """Commit effects built outside the pipeline (the till: ``pos``), then publish; False on a storage error."""
        return self._commit(fx)

    def _commit(self, fx: Effects, msgs: list[Message] = ()) -> bool:
        """Write the effects' rows and the delivered offers, then publish; on a storage error publish nothing
        and keep ``msgs``' QoS 1 messages for a retry.  A batch with offers commits one pending record first (the
        offers leave sooner), its rows into their tables once they are out (``_settle``): each is in the file first."""
        store = self.store
        held = None
        try:
            if self._unsettled:
                store.replay_pending()  # before this batch's rows: they may act on those offers
            if fx.offers and fx.rows:
                held = store.hold(fx.rows)
            else:
                store.apply(fx.rows)
                if self.wire.acked:
                    self.ledger.mark_delivered(self.wire.acked)
            for stage in self.stagers:
                stage(fx)
            wrote = self.ledger.in_transaction
            store.commit()
        except Exception as exc:  # noqa: BLE001 - sorted by row_error
            if not row_error(exc):  # the disk: kept for a retry
                self.storage_failed(exc, msgs, fx)
                return False
            self._drop(fx)  # a bug in a row: none of these rows stays for the next commit to write
            raise
        self._unsettled = False
        if self.stages is not None:
            self.stages.mark(4)  # committed (a no-op outside a transport batch)
        if held is None:
            self.wire.acked = []
        if wrote:
            self._recovered()
        try:
            self._after_commit(fx, held is not None)
        finally:
            if held is not None:
                self._settle(held)  # even if a write raised: else the record waits for a restart
        return True

    def _settle(self, held: tuple[list, int] | None = None) -> None:
        """The second commit of a batch that published (``held``: its rows and pending record), or of every
        record a failed second commit or a crash left pending; with it, the offers the broker acknowledged.
        On a storage error the records stay, for the next commit or start; what was published stands."""
        store = self.store
        try:
            n = store.settle(*held) if held else store.replay_pending()
            if self.wire.acked:
                self.ledger.mark_delivered(self.wire.acked)
            store.commit()
        except Exception as exc:  # noqa: BLE001 - sorted by row_error
            self._unsettled = True
            if row_error(exc):  # a bug in a row, not the disk: the record stays, for the replay that isolates it
                self.metrics.internal_errors.inc(store.abandon(exc))
                return
            self.storage_failed(exc, [])
            if held and held[1] and self.store is not store:  # set aside as corrupt: its rows are only here now,
                self._settle((held[0], 0))  # so into the fresh ledger (no record 0 there to drop); once
            return
        self._unsettled = False
        self.wire.acked = []
        if n and not held:
            log.warning("wrote the rows of %d published batch(es) whose second commit was cut off", n)

    def _recovered(self) -> None:
        if self._storage_down:
            self._storage_down = False
            log.warning("storage recovered: %s takes writes again", self.store.path)

    def _after_commit(self, fx: Effects, held: bool = False) -> None:
        """Publish; ``held`` (a second commit follows): the offers are written alone first, alerts before it too
        (acks and the rest leave with the transport's write after it)."""
        self.wire.send(fx.offers, self.mqtt.send_now if held else None, self.stages)
        for o in fx.offers:
            self.deliver(f"{self.root}/offer/{o.device}", o.payload)
        mqtt = self.mqtt
        for p in fx.publish:
            mqtt.publish(p.topic, dumps(p.payload), qos=p.qos, retain=p.retain)
            self.deliver(p.topic, p.payload)
        for n in fx.notices:
            if n.kind == "_ws":
                self.alerts.notify_pages(n.data)
                continue
            for fn in self.listeners:
                try:
                    fn(n.kind, n.data)
                except Exception:
                    log.exception("listener failed on %s", n.kind)
        for m in fx.acks:
            mqtt.ack(m.mid, m.qos)
        if held and fx.publish:
            mqtt.send_now()

    def deliver(self, topic: str, payload: Any) -> None:
        """A message just published, for in-process outlets (the shop page's WebSockets)."""
        for fn in self.outlets:
            fn(topic, payload)

    def _drop(self, fx: Effects | None) -> None:
        """The open transaction rolled back, and what ``fx`` changed in memory undone, newest first."""
        self.store.rollback()
        for undo in reversed(fx.undo if fx is not None else ()):
            undo()

    def storage_failed(self, exc: Exception, msgs: list[Message] = (), fx: Effects | None = None) -> None:
        """Nothing of ``fx`` (or of an admin's requeue) was committed: undo what it changed in memory
        (a withheld offer leaves no cooldown, a refused pause no pause), keep ``msgs``' QoS 1
        messages for a retry, and say once what kind of failure it is."""
        self._drop(fx)
        keep = [m for m in msgs if m.qos]
        self._retry.extend(keep)
        kind = error_kind(exc)
        self.metrics.storage_errors.inc(kind)
        if kind == "corrupt":
            self._replace_corrupt(exc)
        elif not self._storage_down:
            log.error("storage error on %s: cannot write (%s: %s) — offers withheld, %d QoS 1 messages kept "
                      "for retry, admin, pickup and purchase requests answered 503, /readyz 503; tracking "
                      "continues in memory", self.ledger.path, kind, exc, len(keep))
        self._storage_down = True

    def _replace_corrupt(self, exc: Exception) -> None:
        """SQLite calls the ledger corrupt during a run: move it aside (kept for
        ``sqlite3 .recover``) and go on with a fresh one; memory keeps the live state."""
        path = self.ledger.path
        self.ledger.stop_checkpoints()
        try:
            self.ledger.conn.close()
        except sqlite3.Error:
            pass
        set_aside(path, exc, "during the run")
        self.ledger, self.store = open_ledger(path, store_id=self.cfg.store_id, sealer=self.sealer,
                                              on_dropped=self.metrics.internal_errors.inc)
        self.ledger.checkpoint_in_thread()
        if self.sync is not None:
            self.sync.store = self.ledger
        self.metrics.outbox_pending.fn = self.ledger.outbox.pending

    def expire_offers(self, now: float) -> int:
        return self.wire.expire(self.ledger, now)

    # -- time-driven transitions (dwell, silence)
    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - sorted by row_error
                if row_error(exc):  # a bug (a row _commit refused and rolled back included), not the disk
                    log.exception("tracker tick failed")
                else:
                    self.storage_failed(exc, [])

    def tick(self) -> None:
        if self._storage_down and not self._retry:
            try:
                self.store.probe(self.clock())  # one small write: does the ledger take writes again?
            except sqlite3.Error as exc:
                self.storage_failed(exc, [])
                return
            self._recovered()
        if self._retry:
            msgs, self._retry = self._retry, []
            self.on_batch(msgs)
            if self._storage_down:
                return
        wall = self.clock()
        ping_clock = self.cfg.tracking.clock == "ping"
        now = self.state.sim_now if ping_clock else wall
        if ping_clock and not now:
            now = None  # no ping yet: only escalations (on the wall clock) run
        else:
            self.expire_offers(now)
        self._commit(self.pipeline.tick(now, wall))

    # -- admin
    def forget(self, device: str) -> dict[str, int | str] | None:
        """Forget a device: every stored row and its live state; one ``forget`` event
        for central.  Returns the pseudonym and counts per kind (None: storage failed)."""
        dropped = self.touch().forget(device)
        pseudo = dropped["device"]
        if not self._commit(self.pipeline.take()):
            return None
        counts = self.store.forgotten.pop(pseudo, {})
        log.info("forgot device %s: %s", pseudo, ", ".join(f"{n} {k}" for k, n in counts.items()))
        return {**dropped, **counts}

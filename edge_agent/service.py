"""The agent: one place that composes transports, the pipeline and storage.

Hot path, per batch of MQTT messages (a single ping is a batch of one):

1. decode every payload (``codecs``) — failures go to ``{R}/deadletter``;
2. place every ping in local metres (``geometry.frames`` for WGS84, vectorised;
   ``geometry.beacons`` for BLE sightings);
3. classify the whole batch against the fence index (``geometry.fences``);
4. step each device's tracker (``geometry.tracking``) → enter / exit / dwell;
5. decide offers (``decisions``), write ledger + outbox + audit, **commit
   once**, then publish offers at QoS 1 (so a crash can repeat an offer id,
   never send a second offer);
6. acknowledge QoS 1 actions / consent / inventory after their commit.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import math
import secrets
import sqlite3
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

import numpy as np
from paho.mqtt.client import topic_matches_sub as topic_matches

from geometry import beacons as beaconing
from geometry.fences import FenceIndex, Match
from geometry.frames import LocalFrame
from geometry.tracking import DeviceTrack, Entered, Exited, TrackParams, step, tick
from store_config.model import Consent, Profile, StoreConfig
from sync.pseudonym import Pseudonymizer, load_or_create_secret
from sync.tasks import Sync, cancel_and_wait

from . import codecs, sources
from .alerts import AlertManager
from .codecs import PayloadError, Ping
from .decisions import OfferHistory, Outcome, decide, promotions_by_fence, store_day
from .guard import SpoofGuard, shed_stale
from .ledger import Ledger
from .metrics import Metrics
from .mqtt import Message, MqttClient
from .reload import Reloader, file_mtime

log = logging.getLogger("edge_agent")

EMPTY_MATCH = Match(frozenset(), frozenset(), frozenset())
INVENTORY_MAX_BYTES = 1 << 20


@dataclass(slots=True)
class Runtime:
    """Everything derived from one config version (swapped atomically)."""

    cfg: StoreConfig
    frame: LocalFrame
    index: FenceIndex
    params: TrackParams
    fences: dict
    promos: dict
    beacons: dict
    tz: ZoneInfo


def build_runtime(cfg: StoreConfig) -> Runtime:
    index = FenceIndex(cfg.fences)
    params = TrackParams(
        timeout_s=cfg.tracking.timeout_s,
        sustained_pings=cfg.tracking.sustained_pings,
        dwell_s={f.id: f.dwell_s for f in cfg.fences if f.dwell_s},
        halfwidth=index.halfwidth,
    )
    return Runtime(
        cfg=cfg,
        frame=LocalFrame(cfg.anchor.lat, cfg.anchor.lon, cfg.anchor.bearing),
        index=index,
        params=params,
        fences={f.id: f for f in cfg.fences},
        promos=promotions_by_fence(cfg.fences, cfg.promotions),
        beacons={b.beacon_id: b for b in cfg.beacons},
        tz=ZoneInfo(cfg.timezone),
    )


def open_ledger(path: Path, *, store_id: str, metrics: Metrics) -> Ledger:
    """Open the ledger; a file that is not a usable SQLite database is moved
    aside (kept for forensics, never deleted) and a fresh one is started."""
    try:
        return Ledger(path, store_id=store_id)
    except sqlite3.DatabaseError as exc:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        metrics.storage_errors.inc("corrupt")
        log.error("%s is not a usable database (%s): moved to %s; starting a fresh ledger. "
                  "Offers, codes and unsent events in the old file are not lost: recover them with "
                  "`sqlite3 %s .recover`", path, exc, aside, aside)
        return Ledger(path, store_id=store_id)


def _undated(m: Message) -> Message:
    """A retained consent/inventory message may be old: without its own
    ``ts`` it must never beat a newer state, so it counts as time 0."""
    return Message(m.topic, m.payload, m.qos, m.mid, 0.0, True) if m.retain else m


@dataclass(slots=True)
class PendingOffer:
    offer_id: str
    received: float | None  # receipt time of the ping, for edge_ping_to_offer_seconds (None: a re-send)
    expires: float


class Agent:
    """The edge agent for one store."""

    def __init__(self, cfg: StoreConfig, *, clock: Callable[[], float] = time.time,
                 client_id: str | None = None):
        self.clock = clock
        self.metrics = Metrics()
        self.rt = build_runtime(cfg)
        self.metrics.config_info.set(1, cfg.version)
        self.tracks: dict[str, DeviceTrack] = {}
        self.guard = SpoofGuard(cfg.tracking.max_speed_mps)
        self._retry: list[Message] = []  # QoS 1 messages whose batch failed to commit
        self._storage_down = False
        self.histories: dict[str, OfferHistory] = {}
        self.consents: dict[str, tuple[Consent, float]] = {}  # pseudonym -> (consent, ts)
        # sku -> (qty, ts): the newest value wins, from MQTT, a file (its mtime) or a bundle.
        self.inventory: dict[str, tuple[int, float]] = {}
        self._inv_view: dict[str, int] = {}
        self.merge_inventory(cfg.inventory, file_mtime(cfg, "inventory") or 0.0)
        self.reloader = Reloader(self)
        self.sim_now = 0.0  # latest ping time seen, for clock = "ping"
        self.client_id = client_id or cfg.mqtt.client_id or f"edge-agent-{cfg.store_id}"
        self.mqtt: MqttClient | None = None
        self.ledger: Ledger | None = None
        self.sync: Sync | None = None  # uplink, downlink, outbox housekeeping (sync/tasks.py)
        self.pseudo: Pseudonymizer | None = None
        self._pending: dict[int, PendingOffer] = {}
        self._delivered: list[str] = []
        self._to_publish: list[tuple[str, dict, float]] = []
        self._tasks: list[asyncio.Task] = []
        self.ready = False
        self.listeners: list[Callable[[str, dict], None]] = []  # (kind, data) for demo / page
        self.source_routes: list[tuple[str, int, Callable[[Message], list[Ping]]]] = []
        self.alerts = AlertManager(self)  # associates' alerts (edge_agent/alerts.py)

    # -- config
    @property
    def cfg(self) -> StoreConfig:
        return self.rt.cfg

    @property
    def root(self) -> str:
        return self.rt.cfg.root_topic

    def install(self, cfg: StoreConfig, *, inventory_ts: float | None = None) -> None:
        """Swap in a validated config atomically (index built once per version).

        ``cfg.inventory`` is merged per sku with ``inventory_ts`` as its time
        (newest wins); without it, only skus not known yet are taken."""
        if cfg.store_id != self.cfg.store_id:
            raise ValueError("a reload cannot change the store id")
        rt = build_runtime(cfg)
        self.merge_inventory(cfg.inventory, inventory_ts)
        old = self.rt.cfg
        self.rt = rt
        self.guard.max_speed = cfg.tracking.max_speed_mps
        if self.ledger is not None and old.profiles is not cfg.profiles:
            self._profile_consents_changed(old, cfg)
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
        Returns the skus whose value was taken."""
        taken = []
        for sku, qty in items.items():
            known = self.inventory.get(sku)
            if known is not None and (ts is None or ts < known[1]):
                continue
            before = self._inv_view.get(sku)
            self.inventory[sku] = (int(qty), 0.0 if ts is None else float(ts))
            self._inv_view[sku] = int(qty)
            taken.append(sku)
            if getattr(self, "ledger", None) is not None and getattr(self, "alerts", None) is not None:
                # a file reload or a central bundle can run a promoted sku out too
                self.alerts.on_inventory(sku, before, int(qty))
        return taken

    def _profile_consents_changed(self, old: StoreConfig, new: StoreConfig) -> None:
        """Profiles (files, bundles) carry no consent time.  An opt-out that a
        new profile brings takes effect at once (timed now) and purges; an
        opt-in in a profile never undoes an opt-out the device sent itself."""
        now = self.clock()
        for device, prof in new.profiles.items():
            before = old.profiles.get(device)
            if before is not None and before.consent == prof.consent:
                continue
            pseudo = self.pseudonym(device)
            override = self.consents.get(pseudo)
            if override is None:
                effective = prof.consent
                was = before.consent if before is not None else None
                if was is not None and ((was.offers and not effective.offers)
                                        or (was.tracking and not effective.tracking)):
                    self._purge_device(device, pseudo)  # central sent this profile: no event back
                continue
            cur = override[0]
            merged = replace(cur, offers=cur.offers and prof.consent.offers,
                             tracking=cur.tracking and prof.consent.tracking)
            if merged != cur:
                self._store_consent(device, pseudo, merged, now, source="profile")
        self.ledger.commit()

    def _store_consent(self, device: str, pseudo: str, consent: Consent, ts: float, **extra) -> None:
        """Persist a consent change (newest wins) and purge on an opt-out."""
        prev = self.consents.get(pseudo)
        self.consents[pseudo] = (consent, float(ts))
        self.ledger.begin()
        self.ledger.conn.execute("INSERT OR REPLACE INTO consent(device, offers, tracking, ts) VALUES (?,?,?,?)",
                                 (pseudo, int(consent.offers), int(consent.tracking), float(ts)))
        self.ledger.event("consent", float(ts), pseudo, offers=consent.offers, tracking=consent.tracking, **extra)
        if not consent.tracking or not consent.offers:
            if prev is None or prev[0].offers != consent.offers or prev[0].tracking != consent.tracking:
                self._purge_device(device, pseudo)

    def _purge_device(self, device: str, pseudo: str) -> None:
        """Consent withdrawn: forget the device's stored zones and live position state."""
        self.ledger.forget_device(pseudo)
        self.tracks.pop(device, None)

    # -- lifecycle
    async def start(self) -> None:
        cfg = self.cfg
        data = Path(cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.pseudo = Pseudonymizer(load_or_create_secret(data / "pseudonym.key"))
        self.ledger = open_ledger(data / "edge.sqlite3", store_id=cfg.store_id, metrics=self.metrics)
        self._restore()
        self.sync = Sync(config=lambda: self.cfg, store=self.ledger, metrics=self.metrics, clock=self.clock,
                         install=self.install, mqtt_client=MqttClient)
        self.sync.load_saved_bundle()  # the last good bundle from central, before serving
        self.metrics.outbox_pending.fn = self.ledger.outbox.pending
        self.metrics.broker_connected.fn = lambda: 1.0 if self.mqtt and self.mqtt.connected.is_set() else 0.0
        self.metrics.tracked_devices.fn = lambda: len(self.tracks)
        self.metrics.commit_seconds.fn = lambda: self.ledger.last_commit_s if self.ledger else 0.0
        subs = [(f"{self.root}/ping/+/+", 0), (f"{self.root}/action/+", 1),
                (f"{self.root}/consent/+", 1), (f"{self.root}/inventory", 1), (f"{self.root}/alert/claim", 1)]
        if cfg.ingest.owntracks:
            subs.append(("owntracks/+/+", 0))
        self.source_routes = sources.mqtt_routes(self)  # vendor feeds over MQTT (Aruba ALE)
        subs += [(flt, qos) for flt, qos, _ in self.source_routes]
        self.mqtt = MqttClient(cfg.mqtt, client_id=self.client_id, subscriptions=subs,
                               on_batch=self.on_batch, status_topic=f"{self.root}/status",
                               on_connected=self._on_connected, on_published=self._on_published,
                               clock=self.clock)
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
            if self._delivered:
                self.ledger.mark_delivered(self._delivered)
                self._delivered.clear()
            self.ledger.close()
            self.ledger = None
        log.info("agent stopped")

    def _restore(self) -> None:
        """Rebuild cooldowns, caps and consent from the ledger after a restart."""
        assert self.ledger and self.pseudo
        now = self.clock()
        horizon = max([p.cooldown_s for p in self.cfg.promotions] + [86400.0])
        today = store_day(datetime.fromtimestamp(now, self.rt.tz))
        for device, promo, ts in self.ledger.recent_offers(now - horizon):
            h = self.histories.setdefault(device, OfferHistory())
            h.last_by_promo[promo] = max(ts, h.last_by_promo.get(promo, 0.0))
            h.last_offer_ts = max(ts, h.last_offer_ts or 0.0)
            if store_day(datetime.fromtimestamp(ts, self.rt.tz)) == today:
                h.day, h.day_count = today, h.day_count + 1
        # Holdout records cool a promotion down too (they have no offer row).
        for device, promo, ts in self.ledger.conn.execute(
                "SELECT device, promotion_id, max(ts) FROM audit WHERE reason = 'holdout' AND ts >= ? "
                "GROUP BY device, promotion_id", (now - horizon,)):
            h = self.histories.setdefault(device, OfferHistory())
            h.last_by_promo[promo] = max(ts, h.last_by_promo.get(promo, 0.0))
        self.ledger.conn.execute(
            "CREATE TABLE IF NOT EXISTS consent (device TEXT PRIMARY KEY, offers INTEGER, tracking INTEGER, ts REAL)")
        for device, offers, tracking, ts in self.ledger.conn.execute("SELECT device, offers, tracking, ts FROM consent"):
            self.consents[device] = (Consent(offers=bool(offers), tracking=bool(tracking)), ts)
        self.ledger.conn.execute(
            "CREATE TABLE IF NOT EXISTS inventory (sku TEXT PRIMARY KEY, qty INTEGER, ts REAL)")
        for sku, qty, ts in self.ledger.conn.execute("SELECT sku, qty, ts FROM inventory"):
            if ts >= self.inventory.get(sku, (0, 0.0))[1]:
                self.inventory[sku] = (qty, ts)
                self._inv_view[sku] = qty

    def _on_connected(self) -> None:
        """After every (re)connect: re-send offers that were committed but never acknowledged."""
        if not self.ledger:
            return
        now = self.clock()
        inflight = {p.offer_id for p in self._pending.values()}
        for row in self.ledger.undelivered(now):
            if row.offer_id in inflight:
                continue  # paho re-sends its own in-flight messages
            raw = row.payload.pop("_device", None)
            if raw is None:
                continue
            self._publish_offer(raw, row.payload, None)

    # -- identity and consent
    def pseudonym(self, device: str) -> str:
        return self.pseudo.device(device)

    def consent_for(self, device: str, pseudo: str) -> tuple[Profile | None, Consent]:
        profile = self.cfg.profiles.get(device)
        override = self.consents.get(pseudo)
        if override is not None:
            return profile, override[0]
        if profile is not None:
            return profile, profile.consent
        p = self.cfg.privacy
        return None, Consent(offers=p.anonymous_offers, tracking=p.anonymous_tracking)

    # -- the batch entry point
    def on_batch(self, msgs: list[Message]) -> None:
        """Handle one batch; QoS 1 messages are acknowledged after its commit.

        A storage failure (disk full, locked, I/O error) rolls the batch back:
        its offers are not published (never an offer without a record) and its
        QoS 1 messages are kept and retried every second until storage works.
        """
        acks: list[Message] = []
        self.metrics.queue_depth.set(len(msgs) + len(self._retry))
        try:
            self._handle(msgs, acks)
        except sqlite3.Error as exc:
            self._storage_failed(exc, msgs)
            return
        if self._storage_down:
            self._storage_down = False
            log.warning("storage recovered: %s", self.ledger.path)
        for m in acks:
            self.mqtt.ack(m.mid, m.qos)

    def _storage_failed(self, exc: Exception, msgs: list[Message]) -> None:
        try:
            self.ledger.rollback()
        except sqlite3.Error:
            self.ledger._in_tx = False  # noqa: SLF001 - the connection already rolled back
        dropped = len(self._to_publish)
        self._to_publish = []
        self._delivered = []
        keep = [m for m in msgs if m.qos]
        self._retry.extend(keep)
        self.metrics.storage_errors.inc(type(exc).__name__)
        if not self._storage_down:
            log.error("storage error on %s: %s — %d offers withheld, %d QoS 1 messages kept for retry; "
                      "tracking continues in memory", self.ledger.path, exc, dropped, len(keep))
        self._storage_down = True

    def _handle(self, msgs: list[Message], acks: list[Message]) -> None:
        root = self.root + "/"
        pings: list[Ping] = []
        for m in msgs:
            try:
                route = self._source_route(m.topic) if self.source_routes else None
                if route is not None:
                    pings.extend(route(m))
                elif m.topic.startswith(root):
                    rest = m.topic[len(root):]
                    if rest.startswith("ping/"):
                        ping = self._decode_ping(m, rest)
                        if ping is not None and not (m.retain and self._stale_retained(ping)):
                            pings.append(ping)
                    elif rest.startswith("action/"):
                        self._on_action(m, rest[len("action/"):])
                        acks.append(m)
                    elif rest.startswith("consent/"):
                        self._on_consent(_undated(m), rest[len("consent/"):])
                        acks.append(m)
                    elif rest == "inventory":
                        self._on_inventory(_undated(m))
                        acks.append(m)
                    elif rest == "alert/claim":
                        self.alerts.on_claim_message(m)
                        acks.append(m)
                    else:
                        acks.append(m)
                elif m.topic.startswith("owntracks/"):
                    ping = self._decode_owntracks(m)
                    if ping is not None and not (m.retain and self._stale_retained(ping)):
                        pings.append(ping)
            except PayloadError as exc:
                self.deadletter(m, exc.reason, exc.detail, device=self._topic_device(m.topic))
                if m.qos:
                    acks.append(m)
        self._run_pings(pings)

    def _run_pings(self, pings: list[Ping]) -> None:
        """Shed stale pings under overload, process the batch, commit once, publish."""
        if pings:
            pings, shed = shed_stale(pings, self.cfg.ingest.shed_above)
            if shed:
                self.metrics.pings_shed.inc("stale", n=shed)
            self._process_pings(pings)
        self._commit_and_flush()

    def _topic_device(self, topic: str) -> str | None:
        """The device a topic names ({R}/ping/{src}/{d}, {R}/action|consent/{d},
        owntracks/{user}/{d}), or None for topics that name no device."""
        parts = topic.split("/")
        if parts[0] == "owntracks" and len(parts) == 3:
            return f"owntracks:{parts[1]}:{parts[2]}"
        if len(parts) == 5 and parts[2] == "ping":
            return parts[4]
        if len(parts) == 4 and parts[2] in ("action", "consent"):
            return parts[3]
        return None

    def _decode_ping(self, m: Message, rest: str) -> Ping | None:
        parts = rest.split("/")
        if len(parts) != 3 or not parts[2]:
            raise PayloadError("schema", "ping topic must be {root}/ping/{source}/{device}")
        source, device = parts[1], parts[2]
        if source not in codecs.SOURCES:
            raise PayloadError("unknown_source", f"source {source!r}")
        obj = codecs.decode_object(m.payload, max_bytes=self.cfg.ingest.max_payload_bytes)
        claimed = obj.get("device")
        if claimed is not None and claimed != device:
            raise PayloadError("device_mismatch", "payload device differs from the topic's")
        ping = codecs.parse_ping(obj, device=device, source=source, received=m.received,
                                 max_future_skew_s=self.cfg.tracking.max_future_skew_s)
        ping.raw = m.payload  # kept for a dead letter after positioning (e.g. no known beacon)
        return ping

    def _decode_owntracks(self, m: Message) -> Ping | None:
        parts = m.topic.split("/")
        if len(parts) != 3:
            return None  # owntracks/+/+ only; cmd/event subtopics are not pings
        obj = codecs.decode_object(m.payload, max_bytes=self.cfg.ingest.max_payload_bytes)
        return codecs.parse_owntracks(obj, user=parts[1], device=parts[2], received=m.received,
                                      max_future_skew_s=self.cfg.tracking.max_future_skew_s)

    # -- pings
    def _process_pings(self, pings: list[Ping]) -> None:
        rt = self.rt
        cfg = rt.cfg
        n = len(pings)
        xs = np.empty(n)
        ys = np.empty(n)
        floors = np.zeros(n, dtype=np.int64)
        accs = np.empty(n)
        ok = np.ones(n, dtype=bool)
        default_acc = cfg.tracking.default_acc
        ble = cfg.sources.get("ble", {})
        ble_n, ble_k = ble.get("path_loss_exponent", 2.0), ble.get("strongest", 4)
        geo_idx = []
        for i, p in enumerate(pings):
            if p.x is not None:
                xs[i], ys[i] = p.x, p.y
            elif p.lat is not None:
                geo_idx.append(i)
            else:
                located, unknown = beaconing.locate_detail(p.beacons, rt.beacons, n=ble_n, strongest=ble_k)
                if unknown:
                    self.metrics.unknown_beacons.inc(n=unknown)
                if located is None:
                    ok[i] = False
                    self._dead_ping(p, "no_position", "no known beacon in the sighting")
                    continue
                xs[i], ys[i], fl, acc = located
                if p.floor is None:
                    p.floor = fl
                if p.acc is None or p.acc < acc:
                    p.acc = acc
            floors[i] = p.floor if p.floor is not None else 0
            accs[i] = p.acc if p.acc is not None else default_acc.get(p.source, 10.0)
        if geo_idx:
            lon = np.array([pings[i].lon for i in geo_idx])
            lat = np.array([pings[i].lat for i in geo_idx])
            gx, gy = rt.frame.to_local(lon, lat)
            xs[geo_idx] = gx
            ys[geo_idx] = gy
            for i in geo_idx:
                floors[i] = pings[i].floor if pings[i].floor is not None else 0
                p = pings[i]
                accs[i] = p.acc if p.acc is not None else default_acc.get(p.source, 10.0)
        sel = np.flatnonzero(ok)
        guard = self.guard
        matches = rt.index.classify(xs[sel], ys[sel], floors[sel], accs[sel]) if len(sel) else []
        ping_clock = cfg.tracking.clock == "ping"
        for j, i in enumerate(sel):
            p = pings[i]
            self.metrics.pings.inc(p.source)
            now = (p.ts if p.ts is not None else p.received) if ping_clock else p.received
            if ping_clock and now > self.sim_now:
                self.sim_now = now
            spoof = guard.check(p.device, float(xs[i]), float(ys[i]), int(floors[i]), float(accs[i]), p.ts, p.mock)
            if spoof is not None:
                self.metrics.spoofed.inc(spoof)
                continue
            track = self.tracks.get(p.device)
            if track is not None and now < track.last_seen:
                continue  # out of order: an older ping never undoes a newer one
            if track is None or now - track.last_seen > rt.params.timeout_s:
                # A new visit (first ping, or the first after a silence timeout).
                h = self.histories.get(self.pseudonym(p.device))
                if h is not None:
                    h.visit_count = 0
            track, events = step(track, matches[j], now, rt.params, acc=float(accs[i]))
            self.tracks[p.device] = track
            if events:
                self._on_events(p.device, events, p.received, now)

    def _stale_retained(self, ping: Ping) -> bool:
        """A retained ping is the broker's memory of an old position (the
        OwnTracks app, for one, publishes locations retained). Use it only when
        its own ``ts`` says it is recent; otherwise skip it and count it."""
        if ping.ts is not None and ping.received - ping.ts <= self.cfg.tracking.timeout_s:
            return False
        self.metrics.pings_shed.inc("retained")
        return True

    def _dead_ping(self, p: Ping, reason: str, detail: str) -> None:
        payload = p.raw if p.raw is not None else json.dumps({"device": p.device, "source": p.source}).encode()
        topic = f"{self.root}/ping/{p.source}/{p.device}"
        self.deadletter(Message(topic, payload, 0, 0, p.received), reason, detail, device=p.device)

    # -- transitions → decisions
    def _on_events(self, device: str, events: list, received: float, now: float) -> None:
        rt = self.rt
        pseudo = self.pseudonym(device)
        profile, consent = self.consent_for(device, pseudo)
        cfg = rt.cfg
        for ev in events:
            kind = "enter" if isinstance(ev, Entered) else "exit" if isinstance(ev, Exited) else "dwell"
            self.metrics.transitions.inc(kind)
            if cfg.tracking.publish_events:  # the in-store broker: nothing leaves the store
                self.mqtt.publish(f"{self.root}/event/{device}",
                                  json.dumps({"event": kind, "zone": ev.fence, "ts": ev.ts}).encode(), qos=0)
            if consent.tracking:
                self.ledger.event("transition", ev.ts, pseudo, event=kind, zone=ev.fence)
            for fn in self.listeners:
                fn("transition", {"device": pseudo, "event": kind, "zone": ev.fence, "ts": ev.ts})
            if kind == "exit":
                continue
            fence = rt.fences.get(ev.fence)
            if fence is not None:  # associates' alerts: vip_arrival on enter, assist on long presence
                (self.alerts.on_enter if kind == "enter" else self.alerts.on_dwell)(device, pseudo, fence, now)
            candidates = rt.promos.get(ev.fence, ())
            if fence is None or not candidates:
                continue
            history = self.histories.get(pseudo)
            if history is None:
                history = self.histories[pseudo] = OfferHistory()
            outcome = decide(trigger=kind, fence=fence, candidates=candidates, profile=profile, consent=consent,
                             history=history, inventory=self._inv_view, now=now, tz=rt.tz, offers=cfg.offers,
                             holdout=lambda pid: self.pseudo.fraction(pseudo, pid))
            self._apply_outcome(device, pseudo, kind, fence, outcome, received, now, tracking=consent.tracking)

    def _apply_outcome(self, device: str, pseudo: str, trigger: str, fence, outcome: Outcome,
                       received: float, now: float, *, tracking: bool) -> None:
        audit = []
        # Without tracking consent no zone of the device is stored or sent with a
        # suppression (the promotion and the reason still are).
        where = fence.id if tracking else None
        for d in outcome.decisions:
            self.metrics.decisions.inc(d.outcome, d.reason)
            audit.append((now, pseudo, trigger, where, d.promotion_id, d.outcome, d.reason, None))
            if d.outcome == "suppressed" and d.reason != "outranked":
                self.ledger.event("would_offer" if d.reason == "holdout" else "suppressed", now, pseudo,
                                  promotion_id=d.promotion_id, zone=where, reason=d.reason)
        if outcome.offer is not None:
            promo = outcome.promotion
            d = outcome.offer
            offer_id = "o_" + secrets.token_hex(8)
            expires = now + self.cfg.offers.ttl_s
            payload = {"offer_id": offer_id, "promotion_id": promo.id, "zone": fence.id, "title": promo.title,
                       "message": promo.message, "sku": d.sku, "ts": now, "expires": expires}
            if d.alternative_zone:
                payload["alternative_zone"] = d.alternative_zone
            audit[-1] = audit[-1][:7] + (offer_id,)
            self.ledger.add_offer(offer_id, pseudo, promo.id, fence.id, now, expires,
                                  {**payload, "_device": device})
            self.ledger.event("offer", now, pseudo, offer_id=offer_id, promotion_id=promo.id, zone=fence.id,
                              sku=d.sku, alternative_zone=d.alternative_zone)
            self._to_publish.append((device, payload, received))
            for fn in self.listeners:
                fn("offer", {"device": pseudo, **payload})
            self.alerts.on_offer(device, pseudo, promo, fence.id, now)
        self.ledger.audit(audit)

    def ingest_pings(self, pings: list[Ping]) -> None:
        """Run already-decoded pings (vendor adapters: Meraki, Aruba) through
        the same pipeline as MQTT pings, then commit and publish once."""
        try:
            self._run_pings(pings)
        except sqlite3.Error as exc:
            # Same policy as MQTT batches: roll back, never publish an unrecorded offer.
            self._storage_failed(exc, [])

    def _source_route(self, topic: str) -> Callable[[Message], list[Ping]] | None:
        for flt, _, decode in self.source_routes:
            if topic_matches(flt, topic):
                return decode
        return None

    def _commit_and_flush(self) -> None:
        """Commit everything of this batch once, then publish its offers."""
        led = self.ledger
        if self._delivered:
            led.mark_delivered(self._delivered)
            self._delivered = []
        led.commit()
        self.alerts.flush()
        if self._to_publish:
            batch, self._to_publish = self._to_publish, []
            for device, payload, received in batch:
                self._publish_offer(device, payload, received)

    def _publish_offer(self, device: str, payload: dict, received: float | None) -> None:
        mid = self.mqtt.publish(f"{self.root}/offer/{device}",
                                json.dumps(payload, separators=(",", ":")).encode(), qos=1)
        self._pending[mid] = PendingOffer(payload["offer_id"], received, payload["expires"])
        if device.startswith("owntracks:") and self.cfg.ingest.owntracks and self.cfg.ingest.owntracks_cmd:
            self._owntracks_cmd(device, payload)

    def _owntracks_cmd(self, device: str, offer: dict) -> None:
        """Show the offer in the stock OwnTracks app: its documented ``cmd``
        ``action`` message (a notification plus HTML in the Featured tab),
        sent to the device's own cmd topic (remote commands must be enabled)."""
        _, user, dev = device.split(":", 2)
        esc = html.escape
        content = f"<h2>{esc(offer['title'])}</h2><p>{esc(offer['message'] or '')}</p>"
        if offer.get("alternative_zone"):
            content += f"<p>Out of stock here: find it at {esc(offer['alternative_zone'])}.</p>"
        content += f"<p><small>Offer {esc(offer['offer_id'])}</small></p>"
        cmd = {"_type": "cmd", "action": "action", "notification": offer["title"], "content": content,
               "tst": int(offer["ts"])}
        self.mqtt.publish(f"owntracks/{user}/{dev}/cmd", json.dumps(cmd).encode(), qos=1)

    def _on_published(self, mid: int) -> None:
        p = self._pending.pop(mid, None)
        if p is not None:
            self._delivered.append(p.offer_id)
            if p.received is not None:
                self.metrics.ping_to_offer.observe(max(0.0, self.clock() - p.received))

    def expire_offers(self, now: float) -> int:
        """Give up on offers the broker has not acknowledged by their ``expires``:
        counted in ``edge_offers_expired_total`` and never re-sent after a restart."""
        gone = [mid for mid, p in self._pending.items() if p.expires <= now]
        if not gone:
            return 0
        ids = [self._pending.pop(mid).offer_id for mid in gone]
        self.ledger.begin()
        self.ledger.conn.executemany("UPDATE offers SET delivered = 2 WHERE offer_id = ?", [(o,) for o in ids])
        self.metrics.offers_expired.inc(n=len(ids))
        log.warning("%d offers expired before the broker acknowledged them", len(ids))
        return len(ids)

    # -- actions, consent, inventory (QoS 1, acked after commit)
    def _on_action(self, m: Message, device: str) -> None:
        obj = codecs.decode_object(m.payload, max_bytes=self.cfg.ingest.max_payload_bytes)
        offer_id, action = obj.get("offer_id"), obj.get("action")
        topic = f"{self.root}/offer/{device}"
        if not isinstance(offer_id, str) or action not in ("apply", "dismiss"):
            if isinstance(offer_id, str):  # the phone hears why, the operator sees a dead letter
                self.mqtt.publish(topic, json.dumps({"offer_id": offer_id, "error": "bad_action"}).encode(), qos=1)
            raise PayloadError("schema", "action needs a string 'offer_id' and 'action' apply|dismiss")
        pseudo = self.pseudonym(device)
        now = self.clock()
        row = self.ledger.get_offer(offer_id)
        error = None
        if row is None:
            error = "unknown_offer"
        elif row.device != pseudo:
            error = "not_your_offer"
        elif action == "apply" and row.code is None and row.expires < (self.sim_now if self.cfg.tracking.clock == "ping" else now):
            error = "expired"
        if error:
            self.metrics.actions_refused.inc(error)
            log.info("action %s by %s refused: %s", action, pseudo, error)
            self.mqtt.publish(topic, json.dumps({"offer_id": offer_id, "error": error}).encode(), qos=1)
            return
        if action == "apply":
            had_code = row.code is not None
            code = self.ledger.redeem(offer_id, now)
            if not had_code:
                self.ledger.event("redemption", now, pseudo, offer_id=offer_id, code=code,
                                  promotion_id=row.promotion_id)
            self.ledger.commit()
            self.mqtt.publish(topic, json.dumps({"offer_id": offer_id, "code": code}).encode(), qos=1)
        else:
            if row.action != "dismiss" and row.code is None:
                self.ledger.set_action(offer_id, "dismiss", now)
                self.ledger.event("dismissal", now, pseudo, offer_id=offer_id, promotion_id=row.promotion_id)

    def _on_consent(self, m: Message, device: str) -> None:
        obj = codecs.decode_object(m.payload, max_bytes=self.cfg.ingest.max_payload_bytes)
        keys = {k: obj[k] for k in ("offers", "tracking") if k in obj}
        if not keys or not all(isinstance(v, bool) for v in keys.values()):
            raise PayloadError("schema", "consent needs 'offers' and/or 'tracking' as booleans")
        ts = self._update_ts(obj, m.received)
        pseudo = self.pseudonym(device)
        profile, current = self.consent_for(device, pseudo)
        prev = self.consents.get(pseudo)
        if prev is not None and prev[1] > ts:
            return  # an older change never undoes a newer one
        # One key may be sent; the other stays as it is.
        self._store_consent(device, pseudo, replace(current, **keys), ts)

    def _update_ts(self, obj: dict, received: float) -> float:
        """The ``ts`` of a consent or inventory update (receipt time when absent)."""
        ts = obj.get("ts", received)
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise PayloadError("schema", "'ts' is not a finite number")
        if ts > received + self.cfg.tracking.max_future_skew_s:
            raise PayloadError("clock_skew", f"'ts' is {ts - received:.0f} s in the future")
        return float(ts)

    def _on_inventory(self, m: Message) -> None:
        limit = max(self.cfg.ingest.max_payload_bytes, INVENTORY_MAX_BYTES)  # POS may send many skus at once
        obj = codecs.decode_value(m.payload, max_bytes=limit)  # one update, or a list (JSON or msgpack)
        items = obj if isinstance(obj, list) else [obj]
        parsed = []
        for it in items:
            if not isinstance(it, dict) or not isinstance(it.get("sku"), str):
                raise PayloadError("schema", "inventory update needs a string 'sku'")
            qty = it.get("qty")
            if (isinstance(qty, bool) or not isinstance(qty, (int, float)) or not math.isfinite(qty)
                    or qty < 0 or qty != int(qty)):
                raise PayloadError("schema", "inventory 'qty' must be a non-negative integer")
            parsed.append((it["sku"], int(qty), self._update_ts(it, m.received)))
        self.ledger.begin()
        for sku, qty, ts in parsed:
            if ts < self.inventory.get(sku, (0, 0.0))[1]:
                continue
            self.alerts.on_inventory(sku, self._inv_view.get(sku), qty)
            self.inventory[sku] = (qty, ts)
            self._inv_view[sku] = qty
            self.ledger.conn.execute("INSERT OR REPLACE INTO inventory(sku, qty, ts) VALUES (?,?,?)", (sku, qty, ts))

    # -- dead letters
    def deadletter(self, m: Message, reason: str, detail: str = "", *, device: str | None = None) -> None:
        self.metrics.deadletters.inc(reason)
        self.last_deadletter_reason = reason
        body = {"reason": reason, "detail": detail, "topic": m.topic,
                "payload_b64": base64.b64encode(m.payload[:65536]).decode()}
        self.mqtt.publish(f"{self.root}/deadletter", json.dumps(body).encode(), qos=0)
        self.ledger.event("deadletter", m.received, self.pseudonym(device) if device else None, reason=reason)
        log.debug("dead letter: %s (%s)", reason, detail)

    # -- time-driven transitions (dwell, silence)
    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.tick()
            except sqlite3.Error as exc:
                self._storage_failed(exc, [])
            except Exception:
                log.exception("tracker tick failed")

    def tick(self) -> None:
        if self._retry:
            msgs, self._retry = self._retry, []
            self.on_batch(msgs)
            if self._storage_down:
                return
        ping_clock = self.cfg.tracking.clock == "ping"
        now = self.sim_now if ping_clock else self.clock()
        if ping_clock and not now:
            self.alerts.tick(None)  # escalations run on the wall clock
            self._commit_and_flush()
            return
        params = self.rt.params
        for device, track in list(self.tracks.items()):
            new, events = tick(track, now, params)
            if new is None:
                del self.tracks[device]
                self.guard.forget(device)
            if events:
                # clock = "ping": simulated time runs far ahead of this 1 s tick, so decide at the
                # event's own time (a dwell's threshold), not at the newest ping of any device
                self._on_events(device, events, self.clock(), min(e.ts for e in events) if ping_clock else now)
        if self._pending:
            self.expire_offers(now)
        self.alerts.tick(now)  # long presence in assist fences, escalation of unclaimed alerts
        self._commit_and_flush()

    # -- admin
    def forget(self, device: str) -> None:
        """Forget a device: purge its stored zones, transitions and live state."""
        pseudo = self.pseudonym(device)
        self.tracks.pop(device, None)
        self.guard.forget(device)
        self.histories.pop(pseudo, None)
        self.ledger.forget_device(pseudo)
        self.ledger.commit()

"""The store floor: occupancy, crowding, queues, pickup arrivals, visits.

One room of the pipeline (like :mod:`edge_agent.pipeline.alerts`): no I/O, no clock
reads; what it decides is added to the pipeline's effects.  The pipeline
calls it with a few hooks:

* ``on_transitions(device, pseudo, events, staff)`` — the tracker's enter and
  exit events: counts per fence are kept **incrementally** from them (never
  by scanning the tracks), checkout queues remember who entered when, the
  visit notes its zones, and an entry into a zone where that person has a
  click-and-collect order raises the arrival at once (within the step);
* ``on_visit(device, old_track, track, now)`` — a new visit starts (first
  ping, or the first after a silence; ``old_track`` ended then); the visit
  keeps a reference to its ``track`` (the tracker mutates it in place for the
  whole visit), so its end is the track's ``last_seen`` with no work per
  ping; ``on_gone(device)`` — the tracker forgot a silent device: its visit
  ends and is classed; ``drop(device)`` — a forget or an opt-out: the device
  leaves the counts;
* ``tick(now)`` — every second: crowding and queue alerts (raised after
  their threshold, resolved by ``system`` below 80 %), the hourly ``visits``
  aggregate, and ``{R}/floor`` (retained) when the counts changed, at most
  every ``[floor] publish_s``.

Associates' devices (profiles with ``staff: true``) are never counted and
never visit.  Counts are aggregates: numbers per fence, no ids, so devices
without tracking consent count too.  Raw device ids stay in memory (they
name the topics); stored rows and central events carry pseudonyms only.

Rules, in DESIGN.md terms:

``state``      ``crowded`` at or above ``capacity``, ``busy`` from 80 % of it,
               ``ok`` otherwise (and always without a capacity).
``crowding``   count ≥ ``capacity`` for ``[floor] sustain_s`` (tracker time);
               resolves when the count falls below 80 % of capacity; one open
               per zone.  An associate who resolves it by hand restarts the
               sustain timer.
``queue``      at a ``checkout`` fence, ``queue_alert_at`` devices each inside
               longer than ``queue_wait_s``; resolves when fewer than 80 % of
               ``queue_alert_at`` are still waiting that long.
``pickup``     an order's person enters the order's zone: ``pickup_arrival``
               to role ``pickup`` (``all`` without one), ``{R}/notice/{device}``
               ``pickup``, a ``pickup_arrival`` event (order id and person, no
               position); once per order (``arrived`` is stored).  A claim of
               that alert tells the device who is coming (``pickup_claimed``).
``visits``     on silence: ``bounce`` (< ``visit_s``), ``visit``, ``engaged``
               (≥ ``engaged_s``); a ``visit`` event only with tracking consent;
               an hourly ``visits`` aggregate (counts per class, median length).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from geometry.tracking import Entered, Exited

from .alerts import Alert, AlertManager
from .effects import Effects, Notice, PickupGone, PickupRow, Publish
from .state import State, StoreView

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import Metrics

BUSY = 0.8  # busy from 80 % of capacity; crowding and queue alerts resolve below it
CLASSES = ("bounce", "visit", "engaged")
HOUR = 3600.0


class FloorHost(StoreView, Protocol):
    """What the floor uses of the pipeline (its door): state and config, the
    alerts it raises and resolves, the effects it adds to, the counters, the
    time of the current call, consent and pseudonyms."""

    state: State
    fx: Effects
    metrics: "Metrics"
    alerts: AlertManager
    wall: float


@dataclass(slots=True)
class Visit:
    start: float  # tracker time of the visit's first ping
    track: Any  # its DeviceTrack (mutated in place by the tracker all visit long): last_seen is its end
    zones: list[str] = field(default_factory=list)  # fences entered, in order, once each


@dataclass(slots=True)
class Order:
    order_id: str
    person: str  # person pseudonym
    zone: str
    first_name: str | None
    ts: float
    arrived: float | None = None

    def row(self) -> PickupRow:
        return PickupRow(self.order_id, self.person, self.zone, self.first_name, self.ts, self.arrived)

    def view(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "zone": self.zone, "ts": self.ts, "arrived": self.arrived,
                "state": "arrived" if self.arrived is not None else "waiting"}


class OrderError(Exception):
    """A pickup request that cannot be done: ``status`` 404 or 409."""

    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def zone_state(now: int, capacity: int | None) -> str:
    if not capacity:
        return "ok"
    if now >= capacity:
        return "crowded"
    return "busy" if now >= BUSY * capacity else "ok"


def visit_class(length: float, visit_s: float, engaged_s: float) -> str:
    if length < visit_s:
        return "bounce"
    return "engaged" if length >= engaged_s else "visit"


class Floor:
    """The floor of one store.  Call only from the agent's loop thread."""

    def __init__(self, pipeline: FloorHost):
        self.p = pipeline
        self.counts: dict[str, int] = {}  # fence id -> devices inside (no staff)
        self.where: dict[str, set[str]] = {}  # raw device -> fences it is counted in (memory only)
        self.queues: dict[str, dict[str, float]] = {}  # checkout fence -> device -> entered (tracker time)
        self.over_since: dict[str, float] = {}  # fence -> tracker time its count reached capacity
        self.open: dict[tuple[str, str], str] = {}  # (kind, fence) -> open crowding/queue alert id
        self.dirty = True
        self.last_publish = -math.inf
        self.visits: dict[str, Visit] = {}  # raw device -> its visit (memory only)
        self.hour: float | None = None  # start of the hour being aggregated (tracker time)
        self.hour_lengths: dict[str, list[float]] = {c: [] for c in CLASSES}
        self.orders: dict[str, Order] = {}
        self.waiting: dict[str, list[Order]] = {}  # person -> orders not arrived yet
        self.pickup_zones: dict[str, int] = {}  # zone -> orders waiting there
        self.arrivals: dict[str, tuple[str, str]] = {}  # alert id -> (raw device, order id), memory only
        self._rt = None  # the runtime _caps and _queued were derived from
        self._caps: dict[str, int] = {}
        self._queued: frozenset[str] = frozenset()
        pipeline.alerts.on_claimed.append(self._claimed)

    @property
    def cfg(self):
        return self.p.cfg.floor

    # -- occupancy (hot: once per transition, O(events))
    def _derive(self, rt) -> None:
        """Per config version: the fences with a capacity and those with a queue."""
        self._rt = rt
        self._caps = {f.id: f.capacity for f in rt.fences.values() if f.capacity}
        self._queued = frozenset(f.id for f in rt.fences.values() if f.queue_alert_at)

    def on_transitions(self, device: str, pseudo: str, events: Iterable, staff: bool,
                       tracking: bool = False) -> None:
        """``tracking``: the device's consent now; a visit lists only zones entered with it."""
        if staff:
            return  # an associate's device: never counted
        rt = self.p.state.rt
        if rt is not self._rt:
            self._derive(rt)
        counts, where, caps = self.counts, self.where, self._caps
        for ev in events:
            f = ev.fence
            t = type(ev)
            if t is Entered:
                inside = where.get(device)
                if inside is None:
                    where[device] = {f}
                elif f in inside:
                    continue
                else:
                    inside.add(f)
                n = counts[f] = counts.get(f, 0) + 1
                self.dirty = True
                cap = caps.get(f)
                if cap and n >= cap and f not in self.over_since:
                    self.over_since[f] = ev.ts
                if f in self._queued:
                    self.queues.setdefault(f, {})[device] = ev.ts
                v = self.visits.get(device)
                if v is not None and tracking and f not in v.zones:
                    v.zones.append(f)
                if f in self.pickup_zones:
                    self._arrive(device, pseudo, f, ev.ts)
            elif t is Exited:
                self._leave(device, f)

    def _leave(self, device: str, f: str) -> None:
        inside = self.where.get(device)
        if inside is None or f not in inside:
            return
        inside.discard(f)
        if not inside:
            del self.where[device]
        n = self.counts[f] = self.counts[f] - 1
        self.dirty = True
        cap = self._caps.get(f)
        if cap and n < cap:
            self.over_since.pop(f, None)
        q = self.queues.get(f)
        if q is not None:
            q.pop(device, None)

    def drop(self, device: str) -> None:
        """A forget or an opt-out: the device leaves every count; its visit is not classed."""
        for f in list(self.where.get(device, ())):
            self._leave(device, f)
        self.visits.pop(device, None)

    def snapshot(self, ts: float) -> dict[str, Any]:
        """``GET /v1/floor`` and ``{R}/floor``: ``{"ts", "zones": {id: {"now", "capacity", "state"}}}``."""
        counts = self.counts
        zones = {}
        for fid, f in self.p.rt.fences.items():
            n = counts.get(fid, 0)
            zones[fid] = {"now": n, "capacity": f.capacity, "state": zone_state(n, f.capacity)}
        return {"ts": ts, "zones": zones}

    # -- visits (once per visit)
    def on_visit(self, device: str, old, track, now: float) -> None:
        """A new visit of ``device`` at ``now`` with ``track``; ``old`` is the track
        of a visit that ended in silence (replaced on this ping), or None."""
        if old is not None:
            self.on_gone(device)
        profile = self.p.cfg.profiles.get(device)
        if profile is None or not profile.staff:
            self.visits[device] = Visit(now, track)

    def on_gone(self, device: str) -> None:
        """The tracker forgot a silent device: class its visit (first to last ping)."""
        v = self.visits.pop(device, None)
        if v is None or v.track is None:
            return
        cfg = self.cfg
        end = v.track.last_seen
        length = max(0.0, end - v.start)
        cls = visit_class(length, cfg.visit_s, cfg.engaged_s)
        self.p.metrics.visits.inc(cls)
        self._roll_hour(end)
        self.hour_lengths[cls].append(length)
        pseudo = self.p.pseudonym(device)
        _, consent = self.p.consent_for(device, pseudo)
        if consent.tracking:
            self.p.fx.event("visit", end, pseudo, length_s=round(length, 1), visit_class=cls, zones=v.zones)

    def _roll_hour(self, t: float) -> None:
        start = math.floor(t / HOUR) * HOUR
        if self.hour is None:
            self.hour = start
        elif start > self.hour:
            self._flush_hour()
            self.hour = start

    def _flush_hour(self) -> None:
        lengths = self.hour_lengths
        every = [x for c in CLASSES for x in lengths[c]]
        if every and self.hour is not None:
            self.p.fx.event("visits", self.hour + HOUR, None, hour=self.hour,
                            counts={c: len(lengths[c]) for c in CLASSES},
                            median_s=round(statistics.median(every), 1))
        self.hour_lengths = {c: [] for c in CLASSES}
        self.hour = None

    # -- time: alerts, the hourly aggregate, {R}/floor
    def tick(self, now: float | None) -> None:
        """Every second; ``now`` is the tracker's time (None before any ping on the ping clock)."""
        if now is not None:
            self._crowding(now)
            self._queues(now)
            if self.hour is not None and now >= self.hour + HOUR:
                self._flush_hour()
        self.publish()

    def publish(self, *, force: bool = False) -> None:
        """``{R}/floor`` (retained) and the associates' pages, when the counts changed,
        at most every ``[floor] publish_s`` (wall clock)."""
        wall = self.p.wall
        if not (force or (self.dirty and wall - self.last_publish >= self.cfg.publish_s)):
            return
        last = self.last_publish
        self.dirty = False
        self.last_publish = wall

        def undo() -> None:  # not committed (the tick's rows failed): nothing went out, publish again
            self.dirty, self.last_publish = True, last
        self.p.fx.undo.append(undo)
        snap = self.snapshot(wall)
        gauge = self.p.metrics.zone_occupancy  # set here, not per transition: it lags by publish_s at most
        for fid, z in snap["zones"].items():
            gauge.set(z["now"], fid)
        fx = self.p.fx
        fx.publish.append(Publish(f"{self.p.root}/floor", snap, 1, retain=True))
        fx.notices.append(Notice("floor", snap))
        fx.notices.append(Notice("_ws", {"type": "floor", **snap}))

    def _open_alert(self, kind: str, f: str) -> "Alert | None":
        aid = self.open.get((kind, f))
        if aid is None:
            return None
        alert = self.p.alerts.alerts.get(aid)
        if alert is None or alert.state == "resolved":  # resolved by hand (or pruned)
            del self.open[(kind, f)]
            return None
        return alert

    def _opened(self, kind: str, f: str, alert_id: str) -> None:
        self.open[(kind, f)] = alert_id
        self.p.fx.undo.append(lambda: self.open.pop((kind, f), None))  # not committed: not open

    def _resolve(self, kind: str, f: str) -> None:
        aid = self.open.pop((kind, f))
        self.p.fx.undo.append(lambda: self.open.__setitem__((kind, f), aid))  # not committed: still open
        self.p.alerts.resolve(aid, "system")

    def _crowding(self, now: float) -> None:
        fences = self.p.rt.fences
        alerts = self.p.alerts
        for (kind, f) in [k for k in self.open if k[0] == "crowding"]:
            fence = fences.get(f)
            alert = self._open_alert(kind, f)
            if alert is None:
                if f in self.over_since:
                    self.over_since[f] = now  # resolved by hand while still crowded: sustain again
                continue
            if fence is None or not fence.capacity or self.counts.get(f, 0) < BUSY * fence.capacity:
                self._resolve(kind, f)
        rt = self.p.state.rt
        if rt is not self._rt:
            self._derive(rt)
        for f, cap in self._caps.items():  # a capacity a reload brought, over it already
            if f not in self.over_since and self.counts.get(f, 0) >= cap:
                self.over_since[f] = now
        sustain = self.cfg.sustain_s
        for f, since in list(self.over_since.items()):
            fence = fences.get(f)
            if fence is None or not fence.capacity:
                del self.over_since[f]
                continue
            if ("crowding", f) in self.open or now - since < sustain:
                continue
            n = self.counts.get(f, 0)
            name = fence.name or fence.id
            alert = alerts.raise_alert("crowding", f, None, f"{name} is crowded: {n} people (capacity "
                                       f"{fence.capacity})", None, count=n, capacity=fence.capacity)
            self._opened("crowding", f, alert.alert_id)

    def _queues(self, now: float) -> None:
        fences = self.p.rt.fences
        for f, members in self.queues.items():
            fence = fences.get(f)
            at = fence.queue_alert_at if fence is not None else None
            alert = self._open_alert("queue", f)
            if not at:
                if alert is not None:
                    self._resolve("queue", f)
                continue
            limit = now - fence.queue_wait_s
            waiting = sum(1 for t in members.values() if t <= limit)
            if alert is not None:
                if waiting < BUSY * at:
                    self._resolve("queue", f)
            elif waiting >= at:
                name = fence.name or fence.id
                a = self.p.alerts.raise_alert(
                    "queue", f, None, f"Queue at {name}: {waiting} waiting over "
                    f"{round(fence.queue_wait_s / 60, 1):g} min — open another till", None,
                    count=waiting, queue_alert_at=at)
                self._opened("queue", f, a.alert_id)

    # -- pickups
    def person(self, device: str) -> str:
        """The person pseudonym of a device (the campaigns' person: its profile's
        ``loyalty_id``, all of a person's devices share it; else the device itself)."""
        return self.p.state.person_for(device)

    def loyalty_person(self, loyalty_id: str) -> str:
        return self.p.state.loyalty_person(loyalty_id)

    def restore(self, rows: Iterable[PickupRow]) -> None:
        """Orders from the store after a restart."""
        for r in rows:
            self._index(Order(r.order_id, r.person, r.zone, r.first_name, r.ts, r.arrived))

    def _index(self, o: Order) -> None:
        self.orders[o.order_id] = o
        if o.arrived is None:
            self.waiting.setdefault(o.person, []).append(o)
            self.pickup_zones[o.zone] = self.pickup_zones.get(o.zone, 0) + 1

    def _unwait(self, o: Order) -> None:
        lst = self.waiting.get(o.person)
        if lst and o in lst:
            lst.remove(o)
            if not lst:
                del self.waiting[o.person]
            n = self.pickup_zones[o.zone] - 1
            if n:
                self.pickup_zones[o.zone] = n
            else:
                del self.pickup_zones[o.zone]

    def add_order(self, order_id: str, person: str, zone: str, first_name: str | None) -> tuple[Order, bool]:
        """``POST /v1/pickups``.  Returns (order, created); the same order again is
        not created twice; the same id for another order is a 409."""
        if zone not in self.p.rt.fences:
            raise OrderError(422, "unknown_zone")
        old = self.orders.get(order_id)
        if old is not None:
            if (old.person, old.zone, old.first_name) == (person, zone, first_name):
                return old, False
            raise OrderError(409, "order_exists")
        o = Order(order_id, person, zone, first_name, self.p.wall)
        self._index(o)
        self.p.fx.rows.append(o.row())
        self.p.fx.undo.append(lambda: self._drop(o))  # not committed: no order
        return o, True

    def _drop(self, o: Order) -> None:
        if self.orders.get(o.order_id) is o:
            del self.orders[o.order_id]
        self._unwait(o)

    def drop_orders(self, *persons: str) -> int:
        """A forget: the orders of these persons leave memory (the store deletes their rows)."""
        gone = [o for o in self.orders.values() if o.person in persons]
        for o in gone:
            self._drop(o)
        return len(gone)

    def remove_order(self, order_id: str) -> Order:
        """``DELETE /v1/pickups/{order_id}``: collected.  An arrival alert still open resolves."""
        o = self.orders.pop(order_id, None)
        if o is None:
            raise OrderError(404, "unknown_order")
        self._unwait(o)
        self.p.fx.rows.append(PickupGone(order_id))
        self.p.fx.undo.append(lambda: self._index(o))  # not committed: the order still waits
        for aid, hit in list(self.arrivals.items()):
            if hit[1] == order_id:
                del self.arrivals[aid]
                self.p.fx.undo.append(lambda aid=aid, hit=hit: self.arrivals.__setitem__(aid, hit))  # not committed
                alert = self.p.alerts.alerts.get(aid)
                if alert is not None and alert.state != "resolved":
                    self.p.alerts.resolve(aid, "system")
        return o

    def _arrive(self, device: str, pseudo: str, zone: str, ts: float) -> None:
        person = self.person(device)
        for o in list(self.waiting.get(person, ())):
            if o.zone != zone:
                continue
            self._unwait(o)
            o.arrived = ts
            p = self.p
            fx = p.fx
            fx.rows.append(o.row())
            fences = p.rt.fences
            where = (fences[zone].name or zone) if zone in fences else zone
            who = o.first_name or "A customer"
            roles = p.cfg.associates.roles
            alert = p.alerts.raise_alert(
                "pickup_arrival", zone, o.first_name or pseudo,
                f"{who} is here to collect order {o.order_id} ({where})", None,
                audiences=("pickup",) if "pickup" in roles else ("all",), order_id=o.order_id)
            self.arrivals[alert.alert_id] = (device, o.order_id)

            def undo(o=o, aid=alert.alert_id) -> None:  # not committed: the order still waits
                self.arrivals.pop(aid, None)
                o.arrived = None
                self._index(o)
            fx.undo.append(undo)
            hello = f"Welcome, {o.first_name}!" if o.first_name else "Welcome!"
            fx.publish.append(Publish(f"{p.root}/notice/{device}", {
                "kind": "pickup", "order_id": o.order_id,
                "text": f"{hello} We saw you arrive: your order {o.order_id} is on its way to {where}."}))
            fx.event("pickup_arrival", ts, pseudo, order_id=o.order_id, person=person)

    def _claimed(self, alert: "Alert") -> None:
        """An associate claimed an alert: a pickup's shopper hears who is coming."""
        hit = self.arrivals.pop(alert.alert_id, None)
        if hit is None:
            return
        self.p.fx.undo.append(lambda: self.arrivals.__setitem__(alert.alert_id, hit))  # not committed
        device, order_id = hit
        self.p.fx.publish.append(Publish(f"{self.p.root}/notice/{device}", {
            "kind": "pickup_claimed", "order_id": order_id,
            "text": f"{alert.by} is bringing your order {order_id}."}))


def floor_map(cfg) -> dict[str, Any]:
    """The store map for the associates' page: every fence's outline in local
    metres (rings simplified to ~10 cm), the store outline if any, and the bounds.

    Each zone says where it sits in the hierarchy: ``parent`` (the smallest
    fence on its floor that holds it, or None) and ``leaf`` (it holds no
    other); ``label`` is a good spot for its label (for a department, the
    largest part its sections leave free) and ``box`` its bounds."""
    import shapely

    zones = {}
    geoms = []
    fences = [f for f in cfg.fences if f.kind != "obstacle"]
    inside = {f.id: [o for o in fences if o.id != f.id and o.floor == f.floor
                     and o.geometry.area < f.geometry.area and f.geometry.buffer(1e-6).covers(o.geometry)]
              for f in fences}
    for f in cfg.fences:
        g = shapely.simplify(f.geometry, 0.1)
        geoms.append(g)
        polys = list(g.geoms) if hasattr(g, "geoms") else [g]
        rings = []
        for poly in polys:
            for ring in (poly.exterior, *poly.interiors):
                rings.append([[round(x, 2), round(y, 2)] for x, y in ring.coords])
        kids = inside.get(f.id, [])
        spot = f.geometry
        if kids:
            free = f.geometry.difference(shapely.union_all([k.geometry for k in kids]))
            parts = [p for p in getattr(free, "geoms", [free]) if not p.is_empty]
            if parts:
                spot = max(parts, key=lambda p: p.area)
        c = spot.representative_point() if f.circle is None else shapely.Point(f.circle[0], f.circle[1])
        holders = [o for o in fences if any(k.id == f.id for k in inside[o.id])]
        parent = min(holders, key=lambda o: o.geometry.area).id if holders else None
        zones[f.id] = {"name": f.name or f.id, "kind": f.kind, "floor": f.floor, "capacity": f.capacity,
                       "rings": rings, "label": [round(c.x, 2), round(c.y, 2)], "parent": parent,
                       "leaf": not kids and f.kind != "obstacle", "box": [round(float(v), 2) for v in f.geometry.bounds]}
    outline = None
    if cfg.outline is not None:
        geoms.append(cfg.outline)
        polys = list(cfg.outline.geoms) if hasattr(cfg.outline, "geoms") else [cfg.outline]
        outline = [[[round(x, 2), round(y, 2)] for x, y in p.exterior.coords] for p in polys]
    if geoms:
        b = shapely.total_bounds(geoms)
        bounds = [round(float(v), 2) for v in b]
    else:
        bounds = [0.0, 0.0, 1.0, 1.0]
    floors = sorted({f.floor for f in cfg.fences}) or [0]
    return {"version": cfg.version, "bounds": bounds, "floors": floors, "outline": outline, "zones": zones}

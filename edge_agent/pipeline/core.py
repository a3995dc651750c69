"""The batch step: messages and state in, effects out — no I/O, no clock.

One call of :meth:`Pipeline.step` takes what the transport drained (MQTT
messages, or pings a vendor adapter already decoded) and the time, and
returns an :class:`~edge_agent.pipeline.effects.Effects`: rows to commit,
then offers, messages and notices to publish, then QoS 1 messages to
acknowledge.  The path of a ping:

    route (topic) → decode (``codecs``) → position (frames, beacons) →
    classify the batch (fence index) → step each tracker → on enter/dwell:
    alerts and ``decisions.decide`` → offer rows and the offer to publish

Actions, consent and inventory are handled here too (``control``).  What
cannot be used becomes a dead letter effect with its reason.  The pipeline
mutates its :class:`~edge_agent.pipeline.state.State` (trackers, histories,
consent, inventory) and collects effects in ``self.fx`` until the shell
takes them (:meth:`take`); calls from outside a step (an HTTP claim, a
reload's inventory, a forget) collect there too and go with the next commit.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from geometry.fusion import FusionState, fuse, fuse_small
from geometry.radio import FINGERPRINT_BEACONS
from geometry.tracking import Entered, Exited
from store_config.model import StoreConfig

from . import codecs
from .alerts import AlertManager
from .codecs import Message, PayloadError, Ping
from .guard import shed_stale
from .floor import Floor
from .control import Control, Offers
from .offering import Offering
from .effects import (
    Effects,
    Notice,
    PauseRow,
    Publish,
)
from .state import Runtime, State, build_runtime

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import Metrics

log = logging.getLogger("edge_agent.pipeline")

# Batches of up to this many placed pings with a coarse fix among them are fused and judged
# per ping in plain Python (_classify_small); larger ones vectorised (_classify_fused).  Step CPU
# per ping on hotpath's load with every Wi-Fi ping coarse (acc 8), per-ping / vectorised, µs:
# 40 / 182 at batches of 2, 24 / 46 at 10, 21 / 27 at 20, 20 / 20 at 30, 20 / 18 at 40: the
# crossover is near 30; 24 keeps a margin below it.
SMALL_COARSE = 24


def where(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised (the innermost frame)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"



Route = Callable[[Any], list[Ping]]


class Pipeline:
    """The store's decisions over its in-memory state."""

    def __init__(self, state: State, *, metrics: "Metrics", offers: Offers):
        self.state = state
        self.metrics = metrics
        self.offers = offers
        self.fx = Effects()
        self.wall = 0.0  # the time of the current call (the shell's clock)
        self.source_routes: list[tuple[Callable[[str], bool], Route]] = []
        self.on_decoded: Callable[[], None] | None = None  # [ingest] stages: the ping work begins
        self.alerts = AlertManager(self)
        self.control = Control(self)  # actions, consent, inventory
        self.floor = Floor(self)  # occupancy, crowding, queues, pickups, visits (pipeline/floor.py)
        self.offering = Offering(self)  # decisions after a transition, campaign counters (pipeline/offering.py)

    # -- what alerts and adapters read
    @property
    def rt(self) -> Runtime:
        return self.state.rt

    @property
    def cfg(self) -> StoreConfig:
        return self.state.rt.cfg

    @property
    def root(self) -> str:
        return self.state.rt.cfg.root_topic

    @property
    def tracks(self):
        return self.state.tracks

    def pseudonym(self, device: str) -> str:
        return self.state.pseudonym(device)

    def consent_for(self, device: str, pseudo: str):
        return self.state.consent_for(device, pseudo)

    def take(self) -> Effects:
        """The effects collected so far (the shell commits them, then publishes)."""
        fx, self.fx = self.fx, Effects()
        self.control.codes.clear()
        return fx

    # -- config
    def install(self, cfg: StoreConfig, now: float) -> None:
        """Swap in a validated config (index built once per version).  An opt-out
        a new profile brings takes effect at once (timed ``now``) and purges."""
        old = self.state.rt.cfg
        self.state.rt = build_runtime(cfg)
        self.state.tracks.reschedule(self.state.rt.params)
        self.state.guard.max_speed = cfg.tracking.max_speed_mps
        if old.profiles is not cfg.profiles:
            self.control.profiles_changed(old, cfg, now)
        for pid in self.state.campaign.file_flags_changed(old.promotions, cfg.promotions):
            self.fx.rows.append(PauseRow(pid, None, now))  # the file's newer word wins over the admin's

    # -- the batch step
    def step(self, msgs: Sequence[Message], now: float) -> Effects:
        """Handle one batch of transport messages received by ``now``.  Each
        message is on its own: one that fails anywhere — its decoding, its
        effect, the positioning of its ping — becomes its own dead letter
        (``internal`` when no contract reason fits) and the batch goes on."""
        self.wall = now
        fx = self.fx
        pings: list[Ping] = []
        root = self.root + "/"
        for m in msgs:
            mark = fx.mark()
            try:
                self._message(m, now, pings, root)
            except self.shell_errors:
                raise  # storage: the shell retries the whole batch
            except PayloadError as exc:  # refused by design: what it said (a refusal to the phone) stands
                self._dead_message(m, exc.reason, exc.detail)
            except Exception as exc:  # noqa: BLE001 - any failure costs this message only
                fx.rollback(mark)
                self._internal(exc)
                self._dead_message(m, "internal", type(exc).__name__)
        self.run_pings(pings)
        return self.take()

    shell_errors: tuple[type[BaseException], ...] = ()  # the shell's storage errors pass through (set by it)

    def _message(self, m: Message, now: float, pings: list[Ping], root: str) -> None:
        fx = self.fx
        route = self._source_route(m.topic) if self.source_routes else None
        if route is not None:
            pings.extend(route(m))
        elif m.topic.startswith(root):
            rest = m.topic[len(root):]
            if rest.startswith("ping/"):
                ping = codecs.decode_topic_ping(m, rest, root[:-1], self.cfg)
                if ping is not None and not (m.retain and self._stale_retained(ping)):
                    pings.append(ping)
            elif rest.startswith("action/"):
                self.control.on_action(m, codecs.check_device(rest[len("action/"):]), now)
                fx.acks.append(m)
            elif rest.startswith("consent/"):
                self.control.on_consent(m, codecs.check_device(rest[len("consent/"):]))
                fx.acks.append(m)
            elif rest == "inventory":
                self.control.on_inventory(m)
                fx.acks.append(m)
            elif rest == "alert/claim":
                self.alerts.on_claim_message(m)
                fx.acks.append(m)
            else:
                fx.acks.append(m)
        elif m.topic.startswith("owntracks/") and self.cfg.ingest.owntracks:  # off: not even in flight
            ping = codecs.decode_owntracks_topic(m, self.cfg)
            if ping is not None and not (m.retain and self._stale_retained(ping)):
                pings.append(ping)

    def _dead_message(self, m: Message, reason: str, detail: str) -> None:
        device = topic_device(m.topic)
        self.deadletter(m.topic, m.payload, m.received, reason, detail,
                        device=device if device is not None and len(device) <= codecs.MAX_DEVICE_LEN else None)
        if m.qos:
            self.fx.acks.append(m)  # used up: a poison is never redelivered at every reconnect

    def _internal(self, exc: BaseException) -> None:
        """A failure no contract reason names: logged (type and place only, never the
        payload or the topic: both may carry a raw id) and counted."""
        self.metrics.internal_errors.inc(type(exc).__name__)
        log.warning("a message failed in the step (%s at %s); dead-lettered as 'internal'",
                    type(exc).__name__, where(exc))

    def ingest(self, pings: list[Ping], now: float) -> Effects:
        """Already-decoded pings (vendor adapters: Meraki, Aruba) through the same path."""
        self.wall = now
        self.run_pings(pings)
        return self.take()

    def _source_route(self, topic: str) -> Route | None:
        for matches, decode in self.source_routes:
            if matches(topic):
                return decode
        return None

    def run_pings(self, pings: list[Ping]) -> None:
        """Shed stale pings under overload, then position, match and track the batch."""
        if self.on_decoded is not None:
            self.on_decoded()
        if pings:
            pings, shed = shed_stale(pings, self.cfg.ingest.shed_above)
            if shed:
                self.metrics.pings_shed.inc("stale", n=shed)
            self._isolated(pings)

    def _isolated(self, pings: list[Ping]) -> None:
        """Position, match and track the batch at once; when that fails, each ping
        alone, so only the ping that fails becomes a dead letter.  (What a batch
        changes before it fails is its positions and fusion estimates; a ping's own
        tracking, alerts and decisions are isolated in :meth:`_track_one`.)"""
        mark = self.fx.mark()
        try:
            self._process_pings(pings)
        except self.shell_errors:
            raise
        except Exception as exc:  # noqa: BLE001
            self.fx.rollback(mark)
            if len(pings) > 1:
                for p in pings:
                    self._isolated([p])
                return
            self._internal(exc)
            self._dead_ping(pings[0], "internal", type(exc).__name__)

    def _stale_retained(self, ping: Ping) -> bool:
        """A retained ping is the broker's memory of an old position (the
        OwnTracks app, for one, publishes locations retained). Use it only when
        its own ``ts`` says it is recent; otherwise skip it and count it."""
        if ping.ts is not None and ping.received - ping.ts <= self.cfg.tracking.timeout_s:
            return False
        self.metrics.pings_shed.inc("retained")
        return True

    # -- pings
    def _process_pings(self, pings: list[Ping]) -> None:
        st = self.state
        rt = st.rt
        cfg = rt.cfg
        xs, ys, floors, accs, ok, heard = self._position(pings)
        sel = [i for i, placed in enumerate(ok) if placed]
        ping_clock = cfg.tracking.clock == "ping"
        times = [((p.ts if p.ts is not None else p.received) if ping_clock else p.received)
                 for p in (pings[i] for i in sel)]
        matches, eff_acc, coarse = self._classify(pings, sel, xs, ys, floors, accs, heard, times)
        guard, tracks, params, fx, count = st.guard, st.tracks, rt.params, self.fx, self.metrics.pings.inc
        timeout_s = params.timeout_s
        for j, i in enumerate(sel):  # each ping's tracking, alerts and decisions on its own
            p = pings[i]
            mark = fx.mark()
            try:
                count(p.source)
                now = times[j]
                if ping_clock and now > st.sim_now:
                    st.sim_now = now
                spoof = guard.check(p.device, xs[i], ys[i], floors[i], accs[i], p.ts, p.mock)
                if spoof is not None:
                    self.metrics.spoofed.inc(spoof)
                    continue
                track = tracks.get(p.device)
                if track is not None and now < track.last_seen:
                    continue  # out of order: an older ping never undoes a newer one
                fresh = track is None or now - track.last_seen > timeout_s
                if fresh:
                    # A new visit (first ping, or the first after a silence timeout).
                    h = st.histories.get(st.person_for(p.device))
                    if h is not None:
                        h.visit_count = 0
                step_params = params if coarse is None or not coarse[j] else rt.fused_params
                events = tracks.step(p.device, matches[j], now, step_params, acc=eff_acc[j])
                if fresh:
                    self.floor.on_visit(p.device, track, tracks.get(p.device), now)
                if events:
                    self.on_transitions(p.device, events, p.received, now)
            except self.shell_errors:
                raise
            except Exception as exc:  # noqa: BLE001 - this ping only
                fx.rollback(mark)
                self._internal(exc)
                self._dead_ping(p, "internal", type(exc).__name__)

    def _position(self, pings: list[Ping]):
        """Each ping's position in the store's frame: x/y as sent, lon/lat projected,
        BLE sightings located; what cannot be placed becomes a dead letter (``ok`` false).
        Plain lists: numpy's fixed cost per call dominates the few pings of a batch at low load."""
        st = self.state
        rt = st.rt
        cfg = rt.cfg
        n = len(pings)
        xs = [0.0] * n
        ys = [0.0] * n
        floors = [0] * n
        accs = [0.0] * n
        ok = [True] * n
        heard = [0] * n  # distinct beacons behind a BLE fix; 0: not a beacon fix
        default_acc = cfg.tracking.default_acc
        geo_idx = []
        for i, p in enumerate(pings):
            if p.x is not None:
                xs[i], ys[i] = float(p.x), float(p.y)
            elif p.lat is not None:
                geo_idx.append(i)
            else:
                if rt.ble is not None:
                    located, unknown, distinct = rt.ble.locate(p.beacons)
                else:
                    located, unknown, distinct = None, len(p.beacons), 0
                if unknown:
                    self.metrics.unknown_beacons.inc(n=unknown)
                if located is None:
                    ok[i] = False
                    self._dead_ping(p, "no_position", "no known beacon in the sighting")
                    continue
                x, y, fl, acc = located
                xs[i], ys[i] = float(x), float(y)
                # One or two beacons give a proximity, not a fix: its error does not average out
                # over repeated sightings (a weak fix: it moves the estimate but never makes it more
                # precise than itself).  Three or more give a fingerprint whose error repeats while
                # the phone stays in the same multipath (a correlated fix: geometry.fusion).
                heard[i] = max(distinct, 1)
                if p.floor is None:
                    p.floor = fl
                if p.acc is None or p.acc < acc:
                    p.acc = acc
            if p.floor is not None and p.floor not in rt.floors:
                ok[i] = False
                self._dead_ping(p, "floor", f"floor {p.floor} is not in the layout (floors: "
                                            f"{', '.join(map(str, sorted(rt.floors)))})")
                continue
            floors[i] = int(p.floor) if p.floor is not None else 0
            accs[i] = float(p.acc) if p.acc is not None else float(default_acc.get(p.source, 10.0))
        if geo_idx:
            lon = np.array([pings[i].lon for i in geo_idx])
            lat = np.array([pings[i].lat for i in geo_idx])
            gx, gy = rt.frame.to_local(lon, lat)
            for i, x, y in zip(geo_idx, gx.tolist(), gy.tolist()):
                xs[i], ys[i] = x, y
            for i in geo_idx:
                p = pings[i]
                if p.floor is not None and p.floor not in rt.floors:
                    ok[i] = False
                    self._dead_ping(p, "floor", f"floor {p.floor} is not in the layout")
                    continue
                floors[i] = int(p.floor) if p.floor is not None else 0
                accs[i] = float(p.acc) if p.acc is not None else float(default_acc.get(p.source, 10.0))
        scale = cfg.tracking.acc_scale
        if scale:  # [tracking.acc_scale]: a source's acc calibrated from a survey or its fixes' spread
            accs = [a * float(scale.get(p.source, 1.0)) for a, p in zip(accs, pings)]
        return xs, ys, floors, accs, ok, heard

    def _classify(self, pings: list[Ping], sel: list[int], xs, ys, floors, accs, heard, times):
        """The selected pings' fence matches: precise fixes judged as they came,
        coarse ones through each device's fused estimate.  Lists per selected ping: the
        matches, the accuracy each was judged at, and which were coarse (None: none was)."""
        st = self.state
        rt = st.rt
        if len(sel) < len(pings):  # some could not be placed
            xs, ys, floors, accs = ([v[i] for i in sel] for v in (xs, ys, floors, accs))
        # Only coarse fixes go to the filter: a precise one (UWB, a check-in: acc <= precise_acc)
        # is judged as it came, at no extra cost, and leaves the device's estimate as it was.
        # Every coarse fix does: judged alone, a coarse fix near an edge holds a device in a zone
        # it left until a whole accuracy circle clears the edge (DESIGN "Positioning that tells
        # the truth": leave when P(inside) <= 1 - confidence).
        precise_acc = rt.fusion.precise_acc if rt.fusion is not None else None
        if precise_acc is None or not any(a > precise_acc for a in accs):
            return rt.index.classify(xs, ys, floors, accs), accs, None
        # Coarse fixes are fused per device into a Gaussian estimate, and the tracker is handed
        # P(inside) of each fence (grown over its shelves) under it: inside at >= confidence,
        # straddling in between, outside at <= 1 - confidence (geometry.zoneprob).
        classify = _classify_small if len(sel) <= SMALL_COARSE else _classify_fused
        devices, heard = [pings[i].device for i in sel], [heard[i] for i in sel]
        return classify(rt, st.fusion, devices, xs, ys, floors, accs, heard, times)

    def _dead_ping(self, p: Ping, reason: str, detail: str) -> None:
        payload = p.raw if p.raw is not None else json.dumps({"device": p.device, "source": p.source}).encode()
        topic = f"{self.root}/ping/{p.source}/{p.device}"
        self.deadletter(topic, payload, p.received, reason, detail, device=p.device)

    # -- time-driven transitions (dwell, silence)
    def tick(self, now: float | None, wall: float) -> Effects:
        """Dwell thresholds and silence timeouts due by ``now`` (the tracker's
        clock; None on the ping clock before any ping), escalations by ``wall``."""
        self.wall = wall
        st = self.state
        if now is not None:
            ping_clock = self.cfg.tracking.clock == "ping"
            for device, events in st.tracks.due(now, st.rt.params):  # what is due, not every track
                if device not in st.tracks:  # timed out
                    st.drop_device(device)
                    self.floor.on_gone(device)
                if events:
                    # clock = "ping": simulated time runs far ahead of this 1 s tick, so decide at the
                    # event's own time (a dwell's threshold), not at the newest ping of any device
                    self.on_transitions(device, events, wall, min(e.ts for e in events) if ping_clock else now)
        self.alerts.tick(now)  # long presence in assist fences, escalation of unclaimed alerts
        self.floor.tick(now)  # crowding and queue alerts, the hourly visits aggregate, {R}/floor
        return self.take()

    # -- transitions → alerts and decisions
    def on_transitions(self, device: str, events: list, received: float, now: float) -> None:
        st = self.state
        rt = st.rt
        cfg = rt.cfg
        fx = self.fx
        pseudo = st.pseudonym(device)
        profile, consent = st.consent_for(device, pseudo)
        person = st.person(pseudo, profile)  # cooldowns, caps, holdout and variants key on the person
        staff = profile is not None and profile.staff  # an associate's device: never counted nor offered
        self.floor.on_transitions(device, pseudo, events, staff, consent.tracking)
        for ev in events:
            kind = "enter" if isinstance(ev, Entered) else "exit" if isinstance(ev, Exited) else "dwell"
            self.metrics.transitions.inc(kind)
            if cfg.tracking.publish_events:  # the in-store broker: nothing leaves the store
                fx.publish.append(Publish(f"{self.root}/event/{device}",
                                          {"event": kind, "zone": ev.fence, "ts": ev.ts}, 0))
            if consent.tracking:
                fx.event("transition", ev.ts, pseudo, event=kind, zone=ev.fence)
            fx.notices.append(Notice("transition", {"device": pseudo, "event": kind, "zone": ev.fence,
                                                    "ts": ev.ts}))
            if kind == "exit" or staff:
                continue
            fence = rt.fences.get(ev.fence)
            if fence is not None:  # associates' alerts: vip_arrival on enter, assist on long presence
                (self.alerts.on_enter if kind == "enter" else self.alerts.on_dwell)(device, pseudo, fence, now)
            self.offering.decide(device, pseudo, person, profile, consent, kind, fence, received, now)

    # -- dead letters
    def deadletter(self, topic: str, payload: bytes, received: float, reason: str, detail: str = "", *,
                   device: str | None = None) -> None:
        self.metrics.deadletters.inc(reason)
        self.fx.publish.append(Publish(f"{self.root}/deadletter", {
            "reason": reason, "detail": detail, "topic": topic,
            "payload_b64": base64.b64encode(payload[:65536]).decode()}, 0))
        self.fx.event("deadletter", received, self.pseudonym(device) if device else None, reason=reason)

    # -- admin
    def forget(self, device: str) -> dict[str, int | str]:
        """Forget a device (see :meth:`Control.forget`)."""
        return self.control.forget(device)


def _classify_fused(rt: Runtime, fusion: FusionState, devices: list[str], xs, ys, floors, accs, heard, times):
    """:meth:`Pipeline._classify` for a batch of placed pings, some coarse, vectorised over
    the batch.  Arguments per placed ping."""
    precise_acc = rt.fusion.precise_acc
    xs, ys, floors = np.array(xs, dtype=float), np.array(ys, dtype=float), np.array(floors, dtype=np.int64)
    eff_acc = np.array(accs, dtype=float)
    fz = np.flatnonzero(eff_acc > precise_acc)
    hb = np.array([heard[k] for k in fz], dtype=np.int64)
    f = fuse(fusion, fusion.rows([devices[k] for k in fz]), xs[fz], ys[fz], floors[fz], eff_acc[fz],
             np.asarray(times, dtype=float)[fz], rt.fusion,
             weak=(hb > 0) & (hb < FINGERPRINT_BEACONS), correlated=hb >= FINGERPRINT_BEACONS)
    coarse_a = np.zeros(len(accs), dtype=bool)
    coarse_a[fz] = True
    matches = [None] * len(accs)
    cm, _, _ = rt.zone_prob.judge(f.x, f.y, floors[fz], f.sigma, rt.fusion.confidence, rt.z)
    for j, m in zip(fz, cm):
        matches[j] = m
    eff_acc[fz] = rt.z * f.sigma
    rest = np.flatnonzero(~coarse_a)
    if len(rest):
        for j, m in zip(rest, rt.index.classify(xs[rest], ys[rest], floors[rest], eff_acc[rest])):
            matches[j] = m
    return matches, eff_acc.tolist(), coarse_a.tolist()


def _classify_small(rt: Runtime, fusion: FusionState, devices: list[str], xs, ys, floors, accs, heard, times):
    """:meth:`Pipeline._classify` for a batch of a few placed pings, some coarse: fused and
    judged per ping in plain Python (:func:`~geometry.fusion.fuse_small`,
    :meth:`~geometry.zoneprob.ZoneProb.judge_small`), without numpy's fixed cost per call;
    the same answers (tests/test_geometry_coarse_small.py).  Arguments per placed ping."""
    precise_acc = rt.fusion.precise_acc
    coarse = [a > precise_acc for a in accs]
    matches: list = [None] * len(accs)
    fz = []
    for j, c in enumerate(coarse):
        if c:
            fz.append(j)
        else:  # a precise fix, judged as it came
            matches[j] = rt.index.classify_one(xs[j], ys[j], floors[j], accs[j])
    hb = [heard[j] for j in fz]
    cfl = [floors[j] for j in fz]
    f = fuse_small(fusion, [fusion.row(devices[j]) for j in fz], [xs[j] for j in fz], [ys[j] for j in fz], cfl,
                   [accs[j] for j in fz], [times[j] for j in fz], rt.fusion,
                   weak=[0 < h < FINGERPRINT_BEACONS for h in hb], correlated=[h >= FINGERPRINT_BEACONS for h in hb])
    z = rt.z
    sigma = [o[3] for o in f]
    cm = rt.zone_prob.judge_small([o[0] for o in f], [o[1] for o in f], cfl, sigma, rt.fusion.confidence, z)
    eff_acc = list(accs)
    for j, m, s in zip(fz, cm, sigma):
        matches[j], eff_acc[j] = m, z * s
    return matches, eff_acc, coarse


def topic_device(topic: str) -> str | None:
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


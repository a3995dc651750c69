"""Associates' alerts: raise, deduplicate, deliver, claim, escalate, resolve.

The :class:`AlertManager` is one room of the pipeline
(:mod:`edge_agent.pipeline`) and, like it, does no I/O: what it raises is
added to the pipeline's effects.  The pipeline calls it with a few hooks:

* ``on_enter`` / ``on_dwell`` on transitions (``vip_arrival``, ``assist``);
* ``on_offer`` when an offer goes out (promotions with ``associate_alert``);
* ``on_inventory`` when a sku's quantity changes (``stock_out``);
* ``on_claim_message`` for ``{R}/alert/claim``;
* ``tick`` every second (long presence in ``assist`` fences, escalation).

Every alert and every state change is an outbox event (kind ``alert``)
committed *before* it is published, like offers (the shell commits the
effects, then publishes).  Claims live in memory (and
in the outbox for central): a restart forgets open alerts, so a claim for an
alert raised before the restart gets 404.

Delivery: ``{R}/alert/{audience}`` at QoS 1, where the audience is every role
of ``[associates.roles]`` that lists the alert's zone, else ``all``.  The
agent never uses a zone id as the audience (so a subscriber to
``{R}/alert/#`` sees each alert once per role).  An unclaimed alert escalates
after ``escalate_after_s``: the state ``escalated`` is announced on the
alert's topics and the alert itself is re-sent to ``all``.

The manager knows nothing of HTTP: the associates' routes (``/associates``,
``/associates/ws``, ``/v1/alerts/...``) live in :mod:`edge_agent.http.associates`
and call its plain methods — :meth:`AlertManager.claim`, ``resolve``,
``open_alerts``, and ``subscribe`` / ``unsubscribe`` for a page's live feed.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from geometry.schedule import Tracks

from .codecs import Message, PayloadError, decode_object
from .effects import Effects, Notice, Publish
from .state import StoreView

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import Metrics

log = logging.getLogger("edge_agent.pipeline.alerts")

KINDS = ("vip_arrival", "assist", "stock_out", "crowding", "queue", "pickup_arrival",
         "guardrail")  # a promotion paused itself (pipeline/core.py), to role manager  # the last three: pipeline/floor.py
OPEN, CLAIMED, ESCALATED, RESOLVED = "open", "claimed", "escalated", "resolved"
MAX_ALERTS = 1000  # kept in memory; the oldest resolved/claimed ones go first
MAX_ASSOCIATE_LEN = 64


class ClaimError(Exception):
    """A claim or resolve that cannot be done: ``status`` 404 or 409."""

    def __init__(self, status: int, error: str, by: str | None = None):
        super().__init__(error)
        self.status, self.error, self.by = status, error, by


@dataclass(slots=True)
class Alert:
    alert_id: str
    kind: str
    zone: str | None
    shopper: str | None  # pseudonym or consented first name
    text: str
    ts: float
    audiences: tuple[str, ...]
    device: str | None  # pseudonym for the outbox (None without tracking consent)
    extra: dict[str, Any] = field(default_factory=dict)
    state: str = OPEN
    by: str | None = None
    escalated: bool = False

    def payload(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "kind": self.kind, "zone": self.zone, "shopper": self.shopper,
                "text": self.text, "ts": self.ts, **self.extra}

    def view(self, zone_name: str | None = None) -> dict[str, Any]:
        """What the associates' page shows: the payload plus its state (and the zone's name)."""
        return {**self.payload(), "state": self.state, "by": self.by, "escalated": self.escalated,
                "audience": list(self.audiences), "zone_name": zone_name or self.zone}


class AlertHost(StoreView, Protocol):
    """What alerts use of the pipeline (their door): the config, the trackers,
    consent and pseudonyms, the effects they add to, the counters and the
    time of the current call."""

    fx: Effects
    metrics: "Metrics"
    wall: float

    @property
    def tracks(self) -> Tracks: ...


class AlertManager:
    """Alerts of one agent.  Call only from the agent's loop thread."""

    def __init__(self, agent: AlertHost):
        self.agent = agent  # the pipeline: config, consent, trackers, and the effects alerts add to
        self.alerts: dict[str, Alert] = {}
        self._seen: dict[tuple[str, str], float] = {}  # (kind, shopper pseudonym | sku) -> last raised
        self._visiting: set[str] = set()  # raw device ids with a VIP check done this visit
        self._assisted: set[tuple[str, str, float]] = set()  # (device, fence, entered) already alerted
        self._pages: list[Callable[[dict[str, Any]], None]] = []  # associates' pages (their WebSockets)
        self.commit: Callable[[], bool | None] = lambda: None  # the shell's (False: storage failed)
        self.on_claimed: list[Callable[[Alert], None]] = []  # rooms told of a claim (the floor's pickups)

    # -- configuration helpers
    @property
    def cfg(self):
        return self.agent.cfg.associates

    def audiences(self, zones: list[str | None] | tuple) -> tuple[str, ...]:
        roles = tuple(sorted({r for r, zs in self.cfg.roles.items() for z in zones if z and z in zs}))
        return roles or ("all",)

    def _fresh(self, key: tuple[str, str], now: float) -> bool:
        """True (and remember ``now``) unless ``key`` was raised within the dedupe window."""
        last = self._seen.get(key)
        if last is not None and now - last < self.cfg.dedupe_window_s:
            return False
        self._seen[key] = now
        self.agent.fx.undo.append(lambda: self._seen.pop(key, None) if last is None
                                  else self._seen.__setitem__(key, last))  # not committed: not raised
        return True

    def _shopper(self, device: str, pseudo: str) -> tuple[str, str | None, Any]:
        """(shown name, outbox device, consent): a first name only with ``name_to_staff``."""
        profile, consent = self.agent.consent_for(device, pseudo)
        name = pseudo
        if profile is not None and profile.first_name and consent.name_to_staff:
            name = profile.first_name
        return name, (pseudo if consent.tracking else None), consent

    def _zone_name(self, zone: str | None) -> str:
        f = self.agent.rt.fences.get(zone) if zone else None
        return (f.name or f.id) if f is not None else (zone or "the store")

    # -- rules (hooks from the agent)
    def on_enter(self, device: str, pseudo: str, fence, now: float) -> None:
        """``vip_arrival``: a consenting VIP enters an entrance, or any fence first in a visit."""
        first = device not in self._visiting
        self._visiting.add(device)
        if not self.cfg.vip_arrival or not (first or fence.kind == "entrance"):
            return
        profile, consent = self.agent.consent_for(device, pseudo)
        if profile is None or not profile.vip or not consent.tracking:
            return
        if not self._fresh(("vip_arrival", pseudo), now):
            return
        name, dev, _ = self._shopper(device, pseudo)
        who = name if name != pseudo else "A VIP shopper"
        self.raise_alert("vip_arrival", fence.id, name, f"{who} arrived ({self._zone_name(fence.id)})", dev)

    def on_dwell(self, device: str, pseudo: str, fence, now: float) -> None:
        track = self.agent.tracks.get(device)
        if track is not None:
            self._check_assist(device, pseudo, track, now, only=fence.id)

    def _check_assist(self, device: str, pseudo: str | None, track, now: float, only: str | None = None) -> None:
        fences = self.agent.rt.fences
        limit = self.cfg.assist_dwell_s
        for fid, entered in track.inside.items():
            if only is not None and fid != only:
                continue
            f = fences.get(fid)
            if f is None or not f.assist or now - entered < limit:
                continue
            mark = (device, fid, entered)
            if mark in self._assisted:
                continue  # once per presence, even after the dedupe window
            self._assisted.add(mark)
            self.agent.fx.undo.append(lambda mark=mark: self._assisted.discard(mark))  # not committed: again
            pseudo = pseudo or self.agent.pseudonym(device)
            name, dev, consent = self._shopper(device, pseudo)
            if not consent.offers and not consent.tracking:
                continue  # opted out of everything: nothing about them
            if not self._fresh(("assist", pseudo), now):
                continue
            minutes = max(1, round((now - entered) / 60))
            who = name if name != pseudo else "A shopper"
            self.raise_alert("assist", fid, name,
                             f"{who} has been in {self._zone_name(fid)} for {minutes} min — offer help", dev)

    def on_offer(self, device: str, pseudo: str, promo, zone: str, now: float) -> None:
        """A promotion with ``associate_alert``: an ``assist`` alert when its offer goes out."""
        if not promo.associate_alert:
            return
        if not self._fresh(("assist", pseudo), now):
            return
        name, dev, _ = self._shopper(device, pseudo)
        who = name if name != pseudo else "A shopper"
        self.raise_alert("assist", zone, name, f"{who} in {self._zone_name(zone)} was just offered "
                         f"“{promo.title}” — go over and help", dev, promotion_id=promo.id)

    def on_inventory(self, sku: str, before: int | None, qty: int) -> None:
        """``stock_out``: a promoted sku drops to 0 (from a positive or unknown quantity)."""
        if qty != 0 or before == 0 or not self.cfg.stock_out:
            return
        promos = [p for p in self.agent.cfg.promotions if sku in p.skus]
        if not promos:
            return
        now = self.agent.wall
        if not self._fresh(("stock_out", sku), now):
            return
        zones = [f.id for f in self.agent.cfg.fences if sku in f.skus]
        for p in promos:
            zones.extend(z for z in p.zones if z not in zones)
        zone = zones[0] if zones else None
        titles = ", ".join(f"“{p.title}”" for p in promos)
        where = f" in {self._zone_name(zone)}" if zone else ""
        self.raise_alert("stock_out", zone, None, f"Restock{where}: {titles} has run out (sku {sku})", None,
                         audiences=self.audiences(zones), sku=sku)

    # -- raising and state changes
    def raise_alert(self, kind: str, zone: str | None, shopper: str | None, text: str, device: str | None,
                    *, audiences: tuple[str, ...] | None = None, **extra: Any) -> Alert:
        agent = self.agent
        alert = Alert("a_" + secrets.token_hex(8), kind, zone, shopper, text, agent.wall,
                      audiences or self.audiences([zone]), device, extra)
        self.alerts[alert.alert_id] = alert
        self._prune()
        agent.metrics.alerts.inc(kind)
        fx = agent.fx

        def undo() -> None:  # not committed (storage failed): never raised, so the rule may raise it again
            self.alerts.pop(alert.alert_id, None)
            agent.metrics.alerts.inc(kind, n=-1)  # within the same loop turn as the inc: no scrape sees it go down
        fx.undo.append(undo)
        fx.event("alert", alert.ts, device, alert_id=alert.alert_id, alert_kind=kind, zone=zone,
                           state=OPEN, audience=list(alert.audiences), **extra)
        for aud in alert.audiences:
            fx.publish.append(Publish(f"{agent.root}/alert/{aud}", alert.payload()))
        fx.notices.append(Notice("alert", alert.payload()))
        fx.notices.append(Notice("_ws", {"type": "alert", "alert": alert.view(self._zone_name(alert.zone))}))
        log.info("alert %s %s in %s → %s", alert.alert_id, kind, zone, ",".join(alert.audiences))
        return alert

    def _announce(self, alert: Alert, state: str, by: str | None, topics: tuple[str, ...]) -> None:
        now = self.agent.wall
        fx = self.agent.fx
        fx.event("alert", now, alert.device, alert_id=alert.alert_id, alert_kind=alert.kind,
                                zone=alert.zone, state=state, by=by)
        msg = {"alert_id": alert.alert_id, "kind": alert.kind, "state": state, "by": by, "ts": now}
        for aud in topics:
            fx.publish.append(Publish(f"{self.agent.root}/alert/{aud}", msg))
        fx.notices.append(Notice("alert_state", msg))
        fx.notices.append(Notice("_ws", {"type": "state", **msg}))

    def claim(self, alert_id: str, associate: str) -> Alert:
        """First claim wins; later claims raise ClaimError(409).  Caller commits + flushes."""
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise ClaimError(404, "unknown_alert")
        if alert.state in (CLAIMED, RESOLVED):
            raise ClaimError(409, "already_" + alert.state, alert.by)
        self._undoable(alert)
        alert.state, alert.by = CLAIMED, associate
        self._announce(alert, CLAIMED, associate, self._topics(alert))
        for fn in self.on_claimed:
            fn(alert)
        return alert

    def resolve(self, alert_id: str, associate: str) -> Alert:
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise ClaimError(404, "unknown_alert")
        if alert.state == RESOLVED:
            raise ClaimError(409, "already_resolved", alert.by)
        self._undoable(alert)
        alert.state, alert.by = RESOLVED, associate
        self._announce(alert, RESOLVED, associate, self._topics(alert))
        return alert

    def _undoable(self, alert: Alert) -> None:
        """Not committed (storage failed: the caller answers 503): the alert is as it was."""
        state, by, escalated = alert.state, alert.by, alert.escalated

        def undo() -> None:
            alert.state, alert.by, alert.escalated = state, by, escalated
        self.agent.fx.undo.append(undo)

    def _topics(self, alert: Alert) -> tuple[str, ...]:
        if alert.escalated and "all" not in alert.audiences:
            return alert.audiences + ("all",)
        return alert.audiences

    def _escalate(self, alert: Alert) -> None:
        self._undoable(alert)
        alert.escalated = True
        alert.state = ESCALATED
        self._announce(alert, ESCALATED, None, alert.audiences)
        if "all" not in alert.audiences:
            payload = {**alert.payload(), "escalated": True}
            self.agent.fx.publish.append(Publish(f"{self.agent.root}/alert/all", payload))
        log.info("alert %s escalated (unclaimed for %.0f s)", alert.alert_id, self.cfg.escalate_after_s)

    def open_alerts(self) -> list[dict[str, Any]]:
        return [a.view(self._zone_name(a.zone)) for a in self.alerts.values() if a.state != RESOLVED]

    # -- the associates' pages: each gets every change after it is committed
    def subscribe(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call ``fn(change)`` for every committed change (``{"type": "alert" | "state", ...}``),
        on the loop thread; it must not block."""
        self._pages.append(fn)

    def unsubscribe(self, fn: Callable[[dict[str, Any]], None]) -> None:
        if fn in self._pages:
            self._pages.remove(fn)

    def notify_pages(self, data: dict[str, Any]) -> None:
        """After a commit: hand an alert change to the associates' pages."""
        for fn in list(self._pages):
            try:
                fn(data)
            except Exception:
                log.exception("associates' page listener failed")

    def _prune(self) -> None:
        if len(self.alerts) <= MAX_ALERTS:
            return
        for aid in [a.alert_id for a in self.alerts.values() if a.state in (RESOLVED, CLAIMED)]:
            del self.alerts[aid]
            if len(self.alerts) <= MAX_ALERTS:
                return
        while len(self.alerts) > MAX_ALERTS:
            del self.alerts[next(iter(self.alerts))]

    # -- MQTT claims: {R}/alert/claim {"alert_id", "associate"}
    def on_claim_message(self, m: Message) -> None:
        obj = decode_object(m.payload, max_bytes=4096)
        alert_id, associate = obj.get("alert_id"), obj.get("associate")
        if not isinstance(alert_id, str) or not valid_associate(associate):
            raise PayloadError("schema", "a claim needs a string 'alert_id' and a non-empty 'associate' "
                                         f"(at most {MAX_ASSOCIATE_LEN} characters)")
        try:
            self.claim(alert_id, associate.strip())
        except ClaimError as exc:
            if exc.status == 404:
                raise PayloadError("unknown_alert", f"no open alert {alert_id!r}") from exc
            log.info("claim of %s by %s refused: %s", alert_id, associate, exc.error)

    def forget(self, pseudo: str, person: str | None = None) -> int:
        """Drop the alerts naming a forgotten shopper (as ``shopper`` or outbox
        device) and its dedupe keys; the associates' pages get a fresh snapshot."""
        names = {pseudo, person} - {None}
        ids = [a.alert_id for a in self.alerts.values() if a.shopper in names or a.device in names]
        for aid in ids:
            del self.alerts[aid]
        self._seen = {k: t for k, t in self._seen.items() if k[1] not in names}
        if ids:
            self.agent.fx.notices.append(Notice("_ws", {"type": "snapshot", "alerts": self.open_alerts()}))
        return len(ids)

    # -- time: escalation (wall clock) and long presence (tracker time)
    def tick(self, now: float | None) -> None:
        """Every second.  ``now`` is the tracker's time (None before any ping on the ping clock)."""
        wall = self.agent.wall
        after = self.cfg.escalate_after_s
        for alert in list(self.alerts.values()):
            if alert.state == OPEN and not alert.escalated and wall - alert.ts >= after:
                self._escalate(alert)
        tracks = self.agent.tracks
        if self._visiting:
            self._visiting.intersection_update(tracks)
        if self._assisted:
            self._assisted = {m for m in self._assisted if m[0] in tracks and m[1] in tracks[m[0]].inside}
        if now is not None and any(f.assist for f in self.agent.rt.fences.values()):
            for device, track in tracks.items():
                if track.inside:
                    self._check_assist(device, None, track, now)
        if len(self._seen) > 10000:  # forget keys whose window is over (stock_out runs on the wall clock)
            window = self.cfg.dedupe_window_s
            self._seen = {k: t for k, t in self._seen.items()
                          if (wall if k[0] == "stock_out" or now is None else now) - t < window}



def valid_associate(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v.strip()) <= MAX_ASSOCIATE_LEN

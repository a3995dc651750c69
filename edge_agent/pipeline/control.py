"""Actions, consent and inventory: the QoS 1 messages that change state (a
room of the pipeline, like ``alerts`` and ``floor``).  Acknowledged by the
shell only after their effects are committed.

* ``action`` — ``apply`` draws the offer's code once (a repeat, in this batch
  or later, gets the same code); ``dismiss`` while it has no code; refusals
  (``unknown_offer``, ``not_your_offer``, ``expired``, ``bad_action``) are
  answered on the device's offer topic;
* ``consent`` — the newest change wins (``ts``, receipt time otherwise; a
  retained one without ``ts`` counts as time 0); one key may be sent, the
  other stays; an opt-out purges the device's stored zones and live state;
  profiles (files, bundles) never undo a newer opt-out the device sent;
* ``inventory`` — absolute quantities, the newest per sku wins; a promoted
  sku run out raises ``stock_out``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from store_config.model import Consent, StoreConfig

from . import codecs
from .codecs import PayloadError
from .alerts import AlertManager
from .codecs import Message
from .effects import Action, Code, ConsentRow, Effects, Forget, InventoryRow, Publish
from .floor import Floor
from .ids import new_code
from .offering import Offering
from .state import State, StoreView

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import Metrics

INVENTORY_MAX_BYTES = 1 << 20
MAX_QTY = 10**9  # beyond any shelf, and within SQLite's 64-bit integers


class Offers(Protocol):
    """Read access to the offer ledger (actions check the offer they name)."""

    def get_offer(self, offer_id: str) -> Any: ...


class ControlHost(StoreView, Protocol):
    """What actions, consent and inventory use of the pipeline (their door)."""

    state: State
    fx: Effects
    metrics: "Metrics"
    offers: Offers
    alerts: AlertManager
    floor: Floor
    offering: Offering
    wall: float


class Control:
    """Actions, consent and inventory of one pipeline."""

    def __init__(self, pipeline: ControlHost):
        self.p = pipeline
        self.codes: dict[str, str] = {}  # codes drawn in this batch, not committed yet (cleared by take)

    def on_action(self, m: Message, device: str, now: float) -> None:
        cfg = self.p.cfg
        obj = codecs.decode_object(m.payload, max_bytes=cfg.ingest.max_payload_bytes)
        offer_id, action = obj.get("offer_id"), obj.get("action")
        topic = f"{self.p.root}/offer/{device}"
        fx = self.p.fx
        if not isinstance(offer_id, str) or action not in ("apply", "dismiss"):
            if isinstance(offer_id, str):  # the phone hears why, the operator sees a dead letter
                fx.publish.append(Publish(topic, {"offer_id": offer_id, "error": "bad_action"}))
            raise PayloadError("schema", "action needs a string 'offer_id' and 'action' apply|dismiss")
        pseudo = self.p.pseudonym(device)
        row = self.p.offers.get_offer(offer_id)
        code = (row.code or self.codes.get(offer_id)) if row is not None else None
        error = None
        if row is None:
            error = "unknown_offer"
        elif row.device != pseudo:
            error = "not_your_offer"
        elif action == "apply" and code is None and row.expires < (
                self.p.state.sim_now if cfg.tracking.clock == "ping" else now):
            error = "expired"
        if error:
            self.p.metrics.actions_refused.inc(error)
            fx.publish.append(Publish(topic, {"offer_id": offer_id, "error": error}))
            return
        if action == "apply":
            if code is None:
                code = self.codes[offer_id] = new_code()
                fx.rows.append(Code(offer_id, code, now))
                fx.event("redemption", now, pseudo, person=self.p.state.person_for(device), offer_id=offer_id,
                         code=code, promotion_id=row.promotion_id, variant=row.payload.get("variant"))
            fx.publish.append(Publish(topic, {"offer_id": offer_id, "code": code}))
        elif row.action != "dismiss" and code is None:
            fx.rows.append(Action(offer_id, "dismiss", now))
            fx.event("dismissal", now, pseudo, person=self.p.state.person_for(device), offer_id=offer_id,
                     promotion_id=row.promotion_id, variant=row.payload.get("variant"))
            self.p.offering.count_dismissal(row.promotion_id, now)

    def on_consent(self, m: Message, device: str) -> None:
        obj = codecs.decode_object(m.payload, max_bytes=self.p.cfg.ingest.max_payload_bytes)
        keys = {k: obj[k] for k in ("offers", "tracking") if k in obj}
        if not keys or not all(isinstance(v, bool) for v in keys.values()):
            raise PayloadError("schema", "consent needs 'offers' and/or 'tracking' as booleans")
        ts = self._update_ts(obj, m)
        pseudo = self.p.pseudonym(device)
        _, current = self.p.consent_for(device, pseudo)
        prev = self.p.state.consents.get(pseudo)
        if prev is not None and prev[1] > ts:
            return  # an older change never undoes a newer one
        # One key may be sent; the other stays as it is.
        self.store_consent(device, pseudo, replace(current, **keys), ts)

    def store_consent(self, device: str, pseudo: str, consent: Consent, ts: float, **extra) -> None:
        """Record a consent change (newest wins) and purge on an opt-out."""
        st = self.p.state
        prev = st.consents.get(pseudo)
        st.consents[pseudo] = (consent, float(ts))
        self.p.fx.rows.append(ConsentRow(pseudo, consent.offers, consent.tracking, float(ts)))
        self.p.fx.event("consent", float(ts), pseudo, offers=consent.offers, tracking=consent.tracking, **extra)
        if not consent.tracking or not consent.offers:
            if prev is None or prev[0].offers != consent.offers or prev[0].tracking != consent.tracking:
                self.purge(device, pseudo)

    def purge(self, device: str, pseudo: str) -> None:
        """Consent withdrawn: forget the device's stored zones and live position state."""
        self.p.fx.rows.append(Forget(pseudo))
        self.p.state.drop_device(device)
        self.p.floor.drop(device)

    def profiles_changed(self, old: StoreConfig, new: StoreConfig, now: float) -> None:
        """Profiles (files, bundles) carry no consent time.  An opt-out that a
        new profile brings takes effect at once (timed now) and purges; an
        opt-in in a profile never undoes an opt-out the device sent itself."""
        st = self.p.state
        for device, prof in new.profiles.items():
            before = old.profiles.get(device)
            if before is not None and before.consent == prof.consent:
                continue
            pseudo = st.pseudonym(device)
            override = st.consents.get(pseudo)
            if override is None:
                effective = prof.consent
                was = before.consent if before is not None else None
                if was is not None and ((was.offers and not effective.offers)
                                        or (was.tracking and not effective.tracking)):
                    self.purge(device, pseudo)  # central sent this profile: no event back
                continue
            cur = override[0]
            merged = replace(cur, offers=cur.offers and prof.consent.offers,
                             tracking=cur.tracking and prof.consent.tracking)
            if merged != cur:
                self.store_consent(device, pseudo, merged, now, source="profile")

    def _update_ts(self, obj: dict, m: Message) -> float:
        """The ``ts`` of a consent or inventory update (receipt time when absent).
        A retained message without its own ``ts`` may be old: it never beats a
        newer state, so it counts as time 0."""
        received = m.received
        raw = obj.get("ts", 0.0 if m.retain else received)
        if raw is None:
            raise PayloadError("schema", "'ts' is not a finite number")
        ts = codecs.number(raw, "ts")
        if ts > received + self.p.cfg.tracking.max_future_skew_s:
            raise PayloadError("clock_skew", f"'ts' is {ts - received:.0f} s in the future")
        return float(ts)

    def on_inventory(self, m: Message) -> None:
        limit = max(self.p.cfg.ingest.max_payload_bytes, INVENTORY_MAX_BYTES)  # POS may send many skus at once
        obj = codecs.decode_value(m.payload, max_bytes=limit)  # one update, or a list (JSON or msgpack)
        items = obj if isinstance(obj, list) else [obj]
        parsed = []
        for it in items:
            if not isinstance(it, dict) or not isinstance(it.get("sku"), str):
                raise PayloadError("schema", "inventory update needs a string 'sku'")
            qty = it.get("qty")
            if isinstance(qty, bool) or not isinstance(qty, (int, float)):
                raise PayloadError("schema", "inventory 'qty' must be a non-negative integer")
            if not 0 <= qty <= MAX_QTY:  # NaN fails here too
                raise PayloadError("range", f"inventory 'qty' must be 0..{MAX_QTY}")
            if qty != int(qty):
                raise PayloadError("schema", "inventory 'qty' must be a non-negative integer")
            parsed.append((it["sku"], int(qty), self._update_ts(it, m)))
        st = self.p.state
        for sku, qty, ts in parsed:
            if ts < st.inventory.get(sku, (0, 0.0))[1]:
                continue
            self.p.alerts.on_inventory(sku, st.inv_view.get(sku), qty)
            self.p.fx.undo.append(partial(_restore_inventory, st, sku, st.inventory.get(sku),
                                           st.inv_view.get(sku)))  # not committed
            st.set_inventory(sku, qty, ts)
            self.p.fx.rows.append(InventoryRow(sku, qty, ts))

    def merge_inventory(self, items, ts: float | None, now: float) -> list[str]:
        """Take ``{sku: qty}`` as of ``ts`` (newest wins); ``ts=None`` only fills
        skus not known yet.  A promoted sku run out raises ``stock_out``."""
        self.p.wall = now
        taken = []
        for sku, before, qty in self.p.state.newer_inventory(items, ts):
            self.p.alerts.on_inventory(sku, before, qty)
            taken.append(sku)
        return taken

    def forget(self, device: str) -> dict[str, int | str]:
        """Forget a device: drop its live state (tracker, offer history, consent
        override) and ask the store to delete every row carrying its pseudonym;
        then one ``forget`` event (pseudonym only) tells central to erase its copy.
        Returns the pseudonym and what was dropped from memory."""
        st = self.p.state
        pseudo = st.pseudonym(device)
        person = st.person_for(device)
        dropped = {"device": pseudo, "tracks": int(st.tracks.get(device) is not None),
                   "histories": int(st.histories.pop(pseudo, None) is not None),
                   "consent_live": int(st.consents.pop(pseudo, None) is not None)}
        st.histories.pop(person, None)  # the person's cooldowns and caps (campaigns key on the person)
        dropped["alerts"] = self.p.alerts.forget(pseudo, person)  # open alerts name the shopper
        st.drop_device(device)
        self.p.floor.drop(device)
        self.p.fx.rows.append(Forget(pseudo, full=True, person=person))
        self.p.floor.drop_orders(person, pseudo)  # the store deletes their rows (and counts them)
        self.p.fx.event("forget", self.p.wall, pseudo)  # after the Forget row: the store keeps this one
        return dropped


def _restore_inventory(st, sku: str, known: tuple[int, float] | None, view: int | None) -> None:
    """An inventory update that was not committed: the sku is as it was (its retry sees the same change)."""
    for table, value in ((st.inventory, known), (st.inv_view, view)):
        if value is None:
            table.pop(sku, None)
        else:
            table[sku] = value

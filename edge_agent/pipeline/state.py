"""The pipeline's in-memory state: the live config and what it derives, the
trackers, offer histories, consent overrides and inventory.

The shell builds it (restoring histories, consent and inventory from the
store after a restart) and hands it to :class:`~edge_agent.pipeline.Pipeline`;
nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Protocol

from shapely.ops import unary_union
from zoneinfo import ZoneInfo

from geometry.fences import FenceIndex
from geometry.fusion import FusionParams, FusionState, evidence_fences, z_for
from geometry.space import obstacles_on
from geometry.frames import LocalFrame
from geometry.radio import BleModel, store_model
from geometry.schedule import Tracks
from geometry.tracking import TrackParams
from geometry.zoneprob import ZoneProb
from store_config.model import Consent, Profile, StoreConfig

from .campaigns import CampaignState, person_key
from .decisions import OfferHistory, promotions_by_fence
from .guard import SpoofGuard


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
    # The fused tracker ([tracking] fusion): effective fixes are judged against the
    # fences grown over the shelves beside them, with sustained-evidence entry off.
    fusion: FusionParams | None
    fused_index: FenceIndex | None
    fused_params: TrackParams | None
    zone_prob: ZoneProb | None  # P(inside) of the fused_index's fences under a Gaussian estimate
    z: float  # Φ⁻¹(confidence): the radius, in σ, beyond which a fence holds <= 1 - confidence
    floors: frozenset  # floors of fences, beacons and vendor plans; ground floor always
    anonymous: Consent  # the consent of a device with no profile and no consent of its own ([privacy])
    ble: BleModel | None = None  # positions BLE scans (geometry.radio): the survey's model, else defaults


def ble_model(cfg: StoreConfig) -> BleModel | None:
    """The store's BLE radio: its fitted model (``survey fit``), else the
    no-survey defaults over its beacons (geometry.radio.store_model)."""
    return store_model(cfg.beacons, cfg.sources.get("ble", {}),
                       cfg.outline.bounds if cfg.outline is not None else None, cfg.ble_model)


def build_runtime(cfg: StoreConfig) -> Runtime:
    fences = [f for f in cfg.fences if f.kind != "obstacle"]  # an obstacle is never entered
    index = FenceIndex(fences)
    params = TrackParams(
        timeout_s=cfg.tracking.timeout_s,
        sustained_pings=cfg.tracking.sustained_pings,
        dwell_s={f.id: f.dwell_s for f in fences if f.dwell_s},
        halfwidth=index.halfwidth,
    )
    t = cfg.tracking
    fusion = fused_index = fused_params = zone_prob = None
    if t.fusion:
        fusion = FusionParams(confidence=t.confidence, acc_sigmas=t.acc_sigmas, max_gap_s=min(60.0, t.timeout_s))
        obstacles = {}
        for fl in {f.floor for f in fences}:
            parts = obstacles_on(cfg.fences, fl)
            if parts:
                obstacles[fl] = unary_union(parts)
        grown = evidence_fences(fences, obstacles)
        fused_index = FenceIndex(grown)
        zone_prob = ZoneProb(fused_index, grown)
        fused_params = replace(params, sustained_pings=0)
    return Runtime(
        cfg=cfg,
        frame=LocalFrame(cfg.anchor.lat, cfg.anchor.lon, cfg.anchor.bearing),
        index=index,
        params=params,
        fences={f.id: f for f in fences},
        promos=promotions_by_fence(fences, cfg.promotions),
        beacons={b.beacon_id: b for b in cfg.beacons},
        tz=ZoneInfo(cfg.timezone),
        fusion=fusion,
        fused_index=fused_index,
        fused_params=fused_params,
        zone_prob=zone_prob,
        z=z_for(t.confidence),
        floors=frozenset([0, *(f.floor for f in cfg.fences), *(b.floor for b in cfg.beacons),
                           *(p.floor for p in cfg.floorplans)]),
        anonymous=Consent(offers=cfg.privacy.anonymous_offers, tracking=cfg.privacy.anonymous_tracking),
        ble=ble_model(cfg),
    )


@dataclass(slots=True)
class State:
    """Mutable state of one store's pipeline (one event loop thread owns it).

    ``pseudonym`` and ``fraction`` are the keyed hashes (device → pseudonym;
    (pseudonym, promotion) → holdout value in [0, 1)); the shell passes
    them in because their key lives on disk."""

    rt: Runtime
    pseudonym: Callable[[str], str]
    fraction: Callable[..., float]  # (person, promotion id[, purpose]) -> [0, 1)
    tracks: Tracks = field(default_factory=Tracks)  # per-device trackers, scheduled by due time
    guard: SpoofGuard = field(default_factory=SpoofGuard)
    histories: dict[str, OfferHistory] = field(default_factory=dict)  # pseudonym -> history
    consents: dict[str, tuple[Consent, float]] = field(default_factory=dict)  # pseudonym -> (consent, ts)
    # sku -> (qty, ts): the newest value wins, from MQTT, a file (its mtime) or a bundle.
    inventory: dict[str, tuple[int, float]] = field(default_factory=dict)
    inv_view: dict[str, int] = field(default_factory=dict)  # sku -> qty, what decisions read
    sim_now: float = 0.0  # latest ping time seen, for clock = "ping"
    rng: random.Random = field(default_factory=random.Random)  # explore_pct's draws (with scores)
    fusion: FusionState = field(default_factory=FusionState)  # per-device estimates (geometry.fusion)

    def drop_device(self, device: str) -> None:
        """Forget a device's live position state (tracker, estimate, spoof reference)."""
        self.tracks.pop(device)
        self.fusion.forget(device)
        self.guard.forget(device)
    loyalty: Callable[[str], str] | None = None  # loyalty id -> person pseudonym (keyed hash)
    campaign: CampaignState = field(default_factory=CampaignState)  # budgets, pause overrides

    @property
    def cfg(self) -> StoreConfig:
        return self.rt.cfg

    def consent_for(self, device: str, pseudo: str) -> tuple[Profile | None, Consent]:
        profile = self.rt.cfg.profiles.get(device)
        override = self.consents.get(pseudo)
        if override is not None:
            return profile, override[0]
        if profile is not None:
            return profile, profile.consent
        return None, self.rt.anonymous

    def person(self, pseudo: str, profile: Profile | None) -> str:
        """The person of a device (histories, holdout and variants key on it)."""
        return person_key(pseudo, profile, self.loyalty_person)

    def loyalty_person(self, loyalty_id: str) -> str:
        """The person pseudonym of a loyalty id (the shell's keyed hash; without
        one, a device-style pseudonym that no topic's device id can collide with)."""
        if self.loyalty is not None:
            return self.loyalty(loyalty_id)
        return self.pseudonym("\x00loyalty:" + loyalty_id)

    def person_for(self, device: str) -> str:
        return self.person(self.pseudonym(device), self.rt.cfg.profiles.get(device))

    def history(self, pseudo: str) -> OfferHistory:
        h = self.histories.get(pseudo)
        if h is None:
            h = self.histories[pseudo] = OfferHistory()
        return h

    def set_inventory(self, sku: str, qty: int, ts: float) -> None:
        self.inventory[sku] = (qty, ts)
        self.inv_view[sku] = qty

    def newer_inventory(self, items: Mapping[str, int], ts: float | None) -> list[tuple[str, int | None, int]]:
        """Take ``{sku: qty}`` as of ``ts``: per sku the newest value wins (a tie
        goes to the later arrival); ``ts=None`` only fills skus not known yet.
        Returns ``(sku, qty before, qty)`` of the values taken."""
        taken = []
        for sku, qty in items.items():
            known = self.inventory.get(sku)
            if known is not None and (ts is None or ts < known[1]):
                continue
            before = self.inv_view.get(sku)
            self.set_inventory(sku, int(qty), 0.0 if ts is None else float(ts))
            taken.append((sku, before, int(qty)))
        return taken


class StoreView(Protocol):
    """What most parts read of the one who runs the pipeline (the pipeline itself,
    or the agent above it): the config, its runtime, the root topic, and a
    device's pseudonym and consent.  The doors of the parts extend it."""

    @property
    def cfg(self) -> StoreConfig: ...

    @property
    def rt(self) -> Runtime: ...

    @property
    def root(self) -> str: ...

    def pseudonym(self, device: str) -> str: ...

    def consent_for(self, device: str, pseudo: str) -> tuple[Profile | None, Consent]: ...

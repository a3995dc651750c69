"""The pipeline's in-memory state: the live config and what it derives, the
trackers, offer histories, consent overrides and inventory.

The shell builds it (restoring histories, consent and inventory from the
store after a restart) and hands it to :class:`~edge_agent.pipeline.Pipeline`;
nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping
from zoneinfo import ZoneInfo

from geometry.fences import FenceIndex
from geometry.frames import LocalFrame
from geometry.tracking import DeviceTrack, TrackParams
from store_config.model import Consent, Profile, StoreConfig

from ..campaigns import CampaignState, person_key
from ..decisions import OfferHistory, promotions_by_fence
from ..guard import SpoofGuard


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


@dataclass(slots=True)
class State:
    """Mutable state of one store's pipeline (one event loop thread owns it).

    ``pseudonym`` and ``fraction`` are the keyed hashes (device → pseudonym;
    (pseudonym, promotion) → holdout value in [0, 1)); the shell passes
    them in because their key lives on disk."""

    rt: Runtime
    pseudonym: Callable[[str], str]
    fraction: Callable[..., float]  # (person, promotion id[, purpose]) -> [0, 1)
    tracks: dict[str, DeviceTrack] = field(default_factory=dict)
    guard: SpoofGuard = field(default_factory=SpoofGuard)
    histories: dict[str, OfferHistory] = field(default_factory=dict)  # pseudonym -> history
    consents: dict[str, tuple[Consent, float]] = field(default_factory=dict)  # pseudonym -> (consent, ts)
    # sku -> (qty, ts): the newest value wins, from MQTT, a file (its mtime) or a bundle.
    inventory: dict[str, tuple[int, float]] = field(default_factory=dict)
    inv_view: dict[str, int] = field(default_factory=dict)  # sku -> qty, what decisions read
    sim_now: float = 0.0  # latest ping time seen, for clock = "ping"
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
        p = self.rt.cfg.privacy
        return None, Consent(offers=p.anonymous_offers, tracking=p.anonymous_tracking)

    def person(self, pseudo: str, profile: Profile | None) -> str:
        """The person of a device (histories, holdout and variants key on it)."""
        return person_key(pseudo, profile, self.loyalty) if self.loyalty is not None else pseudo

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

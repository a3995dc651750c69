"""The store configuration as one frozen, validated value.

Everything downstream (geometry index, tracker, decisions, transports) reads
these objects; nothing downstream re-checks raw dicts.  Produced by
:func:`store_config.load.load_store`.

All geometry here is already in the store's *local frame* (metres, origin at
the anchor, x right / y up on the plan), whatever frame the files used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from geometry.floorplans import PlanTransform

FENCE_KINDS = ("aisle", "section", "display", "entrance", "checkout", "staff_only", "other", "obstacle")
# kind "obstacle": a shelf, wall or counter no shopper stands in — not a fence (never entered); the
# fused tracker and the simulator treat it as not walkable.
SOURCES = ("wifi", "ble", "html5", "gps", "uwb")
DEFAULT_ACC = MappingProxyType({"uwb": 0.5, "ble": 3.0, "wifi": 8.0, "gps": 10.0, "html5": 25.0})


class EdgeError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(EdgeError):
    """A store configuration that cannot be used; lists every problem found."""

    def __init__(self, problems: list["Problem"] | str):
        if isinstance(problems, str):
            problems = [Problem(file="", where="", field="", message=problems)]
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in a configuration: which file, which feature/object, which field."""

    file: str
    where: str  # e.g. 'feature "aisle-3"', 'promotion "p1"', '[mqtt]'
    field: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.where, self.field and f"field '{self.field}'") if p]
        return f"{': '.join(parts)}: {self.message}" if parts else self.message


@dataclass(frozen=True, slots=True)
class Anchor:
    lat: float
    lon: float
    bearing: float = 0.0


@dataclass(frozen=True, slots=True)
class Fence:
    """A geofence in local metres.  ``geometry`` is a shapely (Multi)Polygon;
    a circular fence is given as its buffered polygon *and* ``circle``
    (cx, cy, r) so exact circle tests stay possible."""

    id: str
    kind: str
    floor: int
    geometry: Any  # shapely Polygon | MultiPolygon, local metres
    name: str = ""
    category: str | None = None
    skus: tuple[str, ...] = ()
    dwell_s: float | None = None
    circle: tuple[float, float, float] | None = None
    assist: bool = False  # flagged for associates' `assist` alerts
    capacity: int | None = None  # people: crowding alerts (see "The store floor")
    queue_alert_at: int | None = None  # checkout fences: this many waiting raise a `queue` alert
    queue_wait_s: float = 120.0  # ... each in the fence longer than this


@dataclass(frozen=True, slots=True)
class Beacon:
    beacon_id: str  # "uuid:major:minor", lower-cased
    x: float
    y: float
    floor: int = 0
    tx_power: float = -59.0


@dataclass(frozen=True, slots=True)
class FloorPlan:
    """A vendor floor plan (``[[floorplans]]``) mapped onto the local frame.

    Matched by ``id`` (Meraki ``floorPlanId``, Aruba ``floor_id``) or ``name``
    (Meraki ``floorPlanName``); ``transform`` maps plan x/y to local metres."""

    id: str | None
    name: str | None
    floor: int = 0
    transform: PlanTransform = PlanTransform()


@dataclass(frozen=True, slots=True)
class Variant:
    """One text of an A/B/n test; people are assigned by weight (keyed hash)."""

    id: str
    title: str
    message: str = ""
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Discount:
    """What a redemption gives away: ``pct`` of the redeemed basket, or a fixed ``amount``."""

    pct: float | None = None
    amount: float | None = None


@dataclass(frozen=True, slots=True)
class Guardrails:
    """Pause the promotion by itself once ``min_exposures`` offers have been
    sent and more than ``max_dismiss_rate`` of them were dismissed."""

    max_dismiss_rate: float = 0.5
    min_exposures: int = 50


@dataclass(frozen=True, slots=True)
class Scores:
    """Central's model scores: ``{segment or "*": {promotion: score}}``."""

    model: str
    table: Mapping[str, Mapping[str, float]]


@dataclass(frozen=True, slots=True)
class Promotion:
    id: str
    title: str
    message: str = ""
    zones: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    skus: tuple[str, ...] = ()
    trigger: str = "enter"  # "enter" | "dwell"
    segments: tuple[str, ...] = ()
    min_loyalty_score: float | None = None
    starts: datetime | None = None  # aware (store tz applied when no offset given)
    ends: datetime | None = None
    hours: tuple[tuple[int, int], ...] = ()  # (start_minute, end_minute) in store local time
    requires_stock: bool = False
    alternative_zone: str | None = None
    priority: int = 0
    cooldown_s: float = 3600.0
    holdout_pct: float = 0.0
    associate_alert: bool = False
    vip_only: bool = False
    variants: tuple[Variant, ...] = ()  # A/B/n texts; empty: the promotion's own title and message
    max_offers: int | None = None  # offers over the promotion's life in this store (None: no limit)
    max_redemptions: int | None = None  # POS redemptions (None: no limit)
    paused: bool = False  # a file or bundle may pause it; the admin endpoints override until it changes
    discount: Discount | None = None  # what a redemption gives away (discount_cost in the report)
    margin_pct: float | None = None  # gross margin on its sales (incremental_margin; score x value)
    guardrails: Guardrails | None = None  # pause itself when shoppers dismiss it too often


@dataclass(frozen=True, slots=True)
class Consent:
    offers: bool = True
    tracking: bool = False
    name_to_staff: bool = False


@dataclass(frozen=True, slots=True)
class Profile:
    device: str
    loyalty_id: str | None = None
    consent: Consent = Consent(offers=True, tracking=True)
    segments: tuple[str, ...] = ()
    loyalty_score: float = 0.0
    vip: bool = False
    first_name: str | None = None
    staff: bool = False  # an associate's device: never counted on the floor, never offered anything


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str | None = "mqtt://127.0.0.1:1883"  # None: embed a broker (demo only)
    username: str | None = None
    password: str | None = None
    client_id: str | None = None  # default: edge-agent-{store_id}
    protocol: str = "3.1.1"  # "3.1.1" | "5"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    keepalive: int = 30


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = "127.0.0.1:8080"
    admin_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # The URL shoppers reach the gateway at (printed in the shelf QR codes), e.g.
    # "https://shop.store.example:8443"; None: derived from listen and TLS.
    public_url: str | None = None
    ping_rate: float = 5.0  # pings per second per device (HTTP and the page's WebSocket)
    ping_burst: int = 10  # bucket size of ping_rate
    address_rate: float = 50.0  # requests per second per client address (bursts of twice that)
    # A connection whose request headers have not all arrived by then is closed (also an idle keep-alive).
    header_timeout_s: float = 10.0
    # Posts per second per client address on each vendor receiver (/v1/ingest/*), bursts of twice that.
    vendor_rate: float = 10.0


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    clock: str = "receive"  # "receive" | "ping"
    timeout_s: float = 120.0  # silence that exits every fence
    # default_factory: a mappingproxy is unhashable on 3.11, so dataclasses reject it as a plain default
    default_acc: Mapping[str, float] = field(default_factory=lambda: DEFAULT_ACC)
    publish_events: bool = False
    max_future_skew_s: float = 300.0
    # Sustained-evidence entry: this many consecutive pings whose centre is
    # inside and whose acc is below the fence's half-width enter it (0 = off).
    sustained_pings: int = 3
    # A ping implying a faster move than this (beyond both accuracies, on the
    # devices' own ts) is a teleport: ignored for triggering and counted.
    # 50 m/s is far beyond anyone on foot yet tolerant of quick test moves.
    max_speed_mps: float = 50.0
    # The fused tracker (geometry.fusion): successive coarse fixes averaged per
    # device; enter when P(inside) >= confidence, exit when <= 1 - confidence.
    fusion: bool = True
    confidence: float = 0.9
    acc_sigmas: float = 2.0  # a fix's acc is this many sigma (2: a 95 % radius; phones report ~1.5)
    # source -> factor on every coarse fix's acc (reported or default), calibrated from a survey or
    # from the fixes' own spread (geometry.calibrate); absent: 1
    acc_scale: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class IngestConfig:
    owntracks: bool = False
    # Offers to owntracks:{user}:{device} devices also go to
    # owntracks/{user}/{device}/cmd as the app's "action" command.
    owntracks_cmd: bool = True
    max_payload_bytes: int = 16384
    # Overload: when one batch holds more pings than this, only the newest
    # ping of each device is processed (stale ones are shed and counted).
    shed_above: int = 5000
    # Where a batch's milliseconds go: edge_stage_*_seconds histograms and a
    # debug log line per batch (read at start; off costs one test per batch).
    stages: bool = False


@dataclass(frozen=True, slots=True)
class OffersConfig:
    ttl_s: float = 900.0
    per_visit_cap: int = 0  # offers per device per visit (0 = unlimited)
    min_gap_s: float = 0.0  # minimum seconds between two offers to one device
    daily_cap: int = 0  # offers per person per store day (0 = unlimited)
    global_holdout_pct: float = 0.0  # the global control group: people who get no offer at all
    code_ttl_s: float = 86400.0  # a redemption code older than this is refused at the till (410)
    attribution_window_s: float = 7200.0  # a purchase counts for offers / would-offers this recent
    scores: str | None = None  # a scores file from central (relative to store.toml); a bundle's scores win
    explore_pct: float = 0.0  # with scores: this share of decisions picks uniformly among the allowed


@dataclass(frozen=True, slots=True)
class PosConfig:
    token: str | None = None  # Bearer token of the tills (POST /v1/pos/*, /v1/pickups); unset: 401


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    anonymous_offers: bool = True
    anonymous_tracking: bool = False
    position_retention_s: float = 86400.0


@dataclass(frozen=True, slots=True)
class SyncConfig:
    central_url: str | None = None
    token: str | None = None
    interval_s: float = 5.0
    transport: str = "http"  # "http" | "mqtt"
    mqtt_url: str | None = None
    encoding: str = "json"  # "json" | "msgpack"
    batch_size: int = 500
    max_outbox_mb: float = 256.0
    timeout_s: float = 10.0  # per request to central; a time-out is retried with backoff
    retention_days: float = 30.0  # ledger, audit and set-aside rows older than this are deleted


@dataclass(frozen=True, slots=True)
class ReloadConfig:
    poll_s: float = 2.0  # how often the config files' mtimes are polled (0 = only SIGHUP / admin endpoint)


@dataclass(frozen=True, slots=True)
class AssociatesConfig:
    token: str | None = None
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # role -> zone ids
    escalate_after_s: float = 120.0
    dedupe_window_s: float = 900.0
    assist_dwell_s: float = 180.0
    vip_arrival: bool = True
    stock_out: bool = True


@dataclass(frozen=True, slots=True)
class ShopConfig:
    """``[shop]``: the store's own page for shoppers without an app (``GET /shop``)."""

    language: str = "en"  # the page's language (BCP 47); built-in labels for en, cs, de
    text: Mapping[str, str] = field(default_factory=dict)  # label overrides, key -> text


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """``[delivery]``: hand every offer, code and notice to the retailer's push service."""

    webhook_url: str | None = None
    webhook_token: str | None = None
    timeout_s: float = 10.0
    retry_s: float = 1.0  # first retry delay; doubles per failure, capped at 30 s


@dataclass(frozen=True, slots=True)
class FloorConfig:
    """``[floor]``: occupancy publishing, crowding, visit classes (see "The store floor")."""

    publish_s: float = 2.0  # {R}/floor is published when it changes, at most this often
    sustain_s: float = 30.0  # a count at or above capacity this long raises `crowding`
    visit_s: float = 120.0  # visits shorter than this are a `bounce`
    engaged_s: float = 600.0  # visits at least this long are `engaged`


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """One store, validated.  ``version`` changes whenever anything that
    affects decisions changes (used to rebuild the fence index once)."""

    path: Path | None
    store_id: str
    name: str
    timezone: str
    anchor: Anchor
    fences: tuple[Fence, ...]
    beacons: tuple[Beacon, ...] = ()
    promotions: tuple[Promotion, ...] = ()
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    inventory: Mapping[str, int] = field(default_factory=dict)
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    tracking: TrackingConfig = TrackingConfig()
    ingest: IngestConfig = IngestConfig()
    offers: OffersConfig = OffersConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    sync: SyncConfig = SyncConfig()
    associates: AssociatesConfig = AssociatesConfig()
    shop: ShopConfig = ShopConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    reload: ReloadConfig = ReloadConfig()
    floor: FloorConfig = FloorConfig()
    pos: PosConfig = PosConfig()
    scores: Scores | None = None  # from [offers] scores or a bundle; None: the rules rank alone
    data_dir: Path = Path("var")
    outline: Any = None  # shapely geometry of the store outline, if the layout has one
    warnings: tuple[Problem, ...] = ()
    version: str = ""
    # Raw tables of `[sources.NAME]` (e.g. meraki: {secret, validator}); read-only.
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # `[[floorplans]]`: vendor floor plans (Meraki, Aruba) -> local frame and floor.
    floorplans: tuple[FloorPlan, ...] = ()
    # The files this config was loaded from: "store", "layout", "promotions",
    # "profiles", "inventory" -> path as used in Problem.file.
    files: Mapping[str, str] = field(default_factory=dict)
    # The store's fitted BLE radio (`edge-agent survey fit`): the JSON of
    # `[sources.ble] model` (default `ble-model.json` beside store.toml), checked
    # by geometry.radio.BleModel.from_dict; None when there is none.
    ble_model: Mapping[str, Any] | None = None

    @property
    def root_topic(self) -> str:
        return f"store/{self.store_id}"

    def fence(self, fence_id: str) -> Fence | None:
        for f in self.fences:
            if f.id == fence_id:
                return f
        return None

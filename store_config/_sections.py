"""The service sections of ``store.toml``, one parser each: ``[mqtt]``,
``[http]``, ``[data]``, ``[tracking]``, ``[ingest]``, ``[offers]``,
``[privacy]``, ``[sync]``, ``[associates]``, ``[reload]``, ``[shop]``, ``[delivery]``, ``[pos]``.

Each parser takes the shared :class:`Collector` (so problems keep the order of
the file's sections) and the parsed TOML document, and returns its frozen
config value with every default filled in.  ``[store]`` is in ``_store.py``,
``[sources.*]`` and ``[[floorplans]]`` in ``_sources.py``.  Pure (it only
asks whether named files exist).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable

from ._checks import ID_RE, Collector, type_name, unknown_key_message
from .model import (
    DEFAULT_ACC,
    SOURCES,
    AssociatesConfig,
    DeliveryConfig,
    FloorConfig,
    HttpConfig,
    IngestConfig,
    MqttConfig,
    OffersConfig,
    PosConfig,
    PrivacyConfig,
    Problem,
    ReloadConfig,
    ShopConfig,
    SyncConfig,
    TrackingConfig,
)

__all__ = [
    "SECTIONS", "section", "warn_unknown_sections", "parse_mqtt", "parse_http", "parse_data",
    "parse_tracking", "parse_ingest", "parse_offers", "parse_privacy", "parse_sync", "parse_associates",
    "parse_reload", "parse_shop", "parse_delivery", "parse_floor", "parse_pos", "check_roles",
]

SECTIONS: dict[str, frozenset[str]] = {
    "store": frozenset({"id", "name", "timezone", "layout", "promotions", "profiles", "inventory", "anchor"}),
    "mqtt": frozenset({"url", "username", "password", "client_id", "protocol", "tls_ca", "tls_cert", "tls_key",
                       "tls_insecure", "keepalive"}),
    "http": frozenset({"listen", "admin_token", "tls_cert", "tls_key", "public_url", "ping_rate", "ping_burst",
                       "address_rate", "header_timeout_s", "vendor_rate"}),
    "data": frozenset({"dir"}),
    "tracking": frozenset({"clock", "timeout_s", "publish_events", "sustained_pings", "default_acc",
                           "max_future_skew_s", "max_speed_mps", "fusion", "confidence", "acc_sigmas",
                           "acc_scale"}),
    "ingest": frozenset({"owntracks", "owntracks_cmd", "max_payload_bytes", "shed_above", "stages"}),
    "offers": frozenset({"ttl_s", "per_visit_cap", "min_gap_s", "daily_cap", "global_holdout_pct", "code_ttl_s",
                         "attribution_window_s", "scores", "explore_pct"}),
    "privacy": frozenset({"anonymous_offers", "anonymous_tracking", "position_retention_s"}),
    "sync": frozenset({"central_url", "token", "interval_s", "transport", "mqtt_url", "encoding", "batch_size",
                       "max_outbox_mb", "timeout_s", "retention_days"}),
    "associates": frozenset({"token", "roles", "escalate_after_s", "dedupe_window_s", "assist_dwell_s",
                             "vip_arrival", "stock_out"}),
    "sources": frozenset({"meraki", "aruba", "ble"}),
    "floorplans": frozenset(),  # an array of tables, parsed by _sources.parse_floorplans
    "reload": frozenset({"poll_s"}),
    "shop": frozenset({"language", "text"}),
    "delivery": frozenset({"webhook_url", "webhook_token", "timeout_s", "retry_s"}),
    "floor": frozenset({"publish_s", "sustain_s", "visit_s", "engaged_s"}),
    "pos": frozenset({"token"}),
}


def section(c: Collector, doc: dict, name: str) -> dict:
    v = doc.get(name, {})
    if not isinstance(v, dict):
        c.err(f"[{name}]", "", f"must be a table, not {type_name(v)}")
        return {}
    c.unknown_keys(v, SECTIONS[name], f"[{name}]")
    return v


def _mqtt_url(c: Collector, where: str, key: str, url: Any) -> str | None:
    if url is None:
        return None
    if not isinstance(url, str):
        c.err(where, key, f"must be a string like 'mqtt://host:1883', not {type_name(url)}")
        return None
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as exc:
        c.err(where, key, f"{url!r} is not a valid URL ({exc})")
        return None
    if "://" not in url:  # 'localhost:1883' parses as scheme 'localhost'
        c.err(where, key, f"no scheme: write mqtt://{url} (mqtts:// for TLS)")
        return None
    if u.scheme not in ("mqtt", "mqtts"):
        c.err(where, key, f"scheme must be mqtt:// or mqtts://, not {u.scheme + '://' if u.scheme else 'none'}")
        return None
    if not u.hostname:
        c.err(where, key, f"{url!r} has no host")
        return None
    if port is not None and port == 0:
        c.err(where, key, "port must be 1–65535")
        return None
    return url


def mqtt_url_problem(url: str) -> str | None:
    """Why ``url`` is not a broker URL that ``[mqtt] url`` would take (None: it would);
    for ``run --broker``, which overrides that key."""
    c = Collector("")
    _mqtt_url(c, "", "", url)
    return c.problems[0].message if c.problems else None


def _file_key(c: Collector, base: Path, where: str, key: str, value: Any) -> str | None:
    """A file path from store.toml: relative to the toml file; must exist."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        c.err(where, key, f"must be a file path string, not {type_name(value)}")
        return None
    p = (base / value).resolve()
    if not p.is_file():
        c.err(where, key, f"file not found: {p}")
        return None
    return str(p)


def _listen(c: Collector, value: str | None) -> str:
    if value is None:
        return HttpConfig.listen
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        c.err("[http]", "listen", f"must be 'host:port' such as '127.0.0.1:8080', not {value!r}")
        return HttpConfig.listen
    if host.startswith("[") != host.endswith("]"):
        c.err("[http]", "listen", f"bad IPv6 host in {value!r} (use '[::1]:8080')")
    return value



def warn_unknown_sections(c: Collector, doc: dict) -> None:
    """An unknown section is an error naming the nearest known one (``[trackng]``
    would otherwise leave every tracking default in place without a word)."""
    for name in doc:
        if name not in SECTIONS:
            c.err(f"[{name}]", "", unknown_key_message(name, SECTIONS, "section"))


def parse_mqtt(c: Collector, doc: dict, base: Path) -> MqttConfig:
    m = section(c, doc, "mqtt")
    W = "[mqtt]"
    proto = m.get("protocol", "3.1.1")
    if proto == 5 or proto == "5" or proto == "5.0":
        proto = "5"
    elif proto not in ("3.1.1",):
        c.err(W, "protocol", f"must be '3.1.1' or '5', not {proto!r}")
        proto = "3.1.1"
    mqtt = MqttConfig(
        url=_mqtt_url(c, W, "url", m.get("url")),
        username=c.string(m, "username", W),
        password=c.string(m, "password", W),
        client_id=c.string(m, "client_id", W, nonempty=True),
        protocol=proto,
        tls_ca=_file_key(c, base, W, "tls_ca", m.get("tls_ca")),
        tls_cert=_file_key(c, base, W, "tls_cert", m.get("tls_cert")),
        tls_key=_file_key(c, base, W, "tls_key", m.get("tls_key")),
        tls_insecure=c.boolean(m, "tls_insecure", W),
        keepalive=c.integer(m, "keepalive", W, default=30, minimum=1, maximum=65535),
    )
    if ("tls_cert" in m) != ("tls_key" in m):
        c.err(W, "tls_key" if "tls_cert" in m else "tls_cert", "tls_cert and tls_key go together")
    if mqtt.password is not None and mqtt.username is None:
        c.err(W, "username", "is required when password is set")
    return mqtt


def parse_http(c: Collector, doc: dict, base: Path) -> HttpConfig:
    h = section(c, doc, "http")
    W = "[http]"
    http = HttpConfig(
        listen=_listen(c, c.string(h, "listen", W, nonempty=True)),
        admin_token=c.string(h, "admin_token", W, nonempty=True, token=True),
        tls_cert=_file_key(c, base, W, "tls_cert", h.get("tls_cert")),
        tls_key=_file_key(c, base, W, "tls_key", h.get("tls_key")),
        public_url=_http_url(c, W, "public_url", c.string(h, "public_url", W, nonempty=True)),
        ping_rate=c.number(h, "ping_rate", W, default=5.0, positive=True),
        ping_burst=c.integer(h, "ping_burst", W, default=10, minimum=1),
        address_rate=c.number(h, "address_rate", W, default=50.0, positive=True),
        header_timeout_s=c.number(h, "header_timeout_s", W, default=10.0, positive=True),
        vendor_rate=c.number(h, "vendor_rate", W, default=10.0, positive=True),
    )
    if ("tls_cert" in h) != ("tls_key" in h):
        c.err(W, "tls_key" if "tls_cert" in h else "tls_cert", "tls_cert and tls_key go together")
    return http


def _http_url(c: Collector, where: str, key: str, url: str | None) -> str | None:
    if url is None:
        return None
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        c.err(where, key, f"must be an http:// or https:// URL, not {url!r}")
        return None
    return url.rstrip("/")


def parse_data(c: Collector, doc: dict, base: Path) -> Path:
    """``[data] dir``: where the SQLite files live, absolute."""
    d = section(c, doc, "data")
    data_rel = c.string(d, "dir", "[data]", default="var", nonempty=True)
    data_dir = (base / data_rel).resolve()
    if data_dir.exists() and not data_dir.is_dir():
        c.err("[data]", "dir", f"{data_dir} exists and is not a directory")
    return data_dir


ADAPTER_SOURCES = ("owntracks", "meraki", "aruba")  # pings the adapters make (edge_pings_total{source})


def parse_tracking(c: Collector, doc: dict) -> TrackingConfig:
    t = section(c, doc, "tracking")
    W = "[tracking]"
    acc = dict(DEFAULT_ACC)
    dacc = t.get("default_acc", {})
    if not isinstance(dacc, dict):
        c.err("[tracking.default_acc]", "", f"must be a table source -> metres, not {type_name(dacc)}")
    else:
        for src in dacc:
            if src not in SOURCES:
                c.err("[tracking.default_acc]", src, unknown_key_message(src, SOURCES, "source"))
                continue
            v = c.number(dacc, src, "[tracking.default_acc]", default=None, positive=True)
            if v is not None:
                acc[src] = v
    scale: dict[str, float] = {}
    sacc = t.get("acc_scale", {})
    if not isinstance(sacc, dict):
        c.err("[tracking.acc_scale]", "", f"must be a table source -> factor, not {type_name(sacc)}")
    else:
        known = (*SOURCES, *ADAPTER_SOURCES)  # a ping's source as counted: the adapters' too
        for src in sacc:
            if src not in known:
                c.warn("[tracking.acc_scale]", src, f"unknown source (known: {', '.join(known)})")
            v = c.number(sacc, src, "[tracking.acc_scale]", default=None, positive=True)
            if v is not None:
                scale[src] = v
    return TrackingConfig(
        clock=c.string(t, "clock", W, default="receive", choices=("receive", "ping")),
        timeout_s=c.number(t, "timeout_s", W, default=120.0, positive=True),
        default_acc=MappingProxyType(acc),
        publish_events=c.boolean(t, "publish_events", W, default=False),
        max_future_skew_s=c.number(t, "max_future_skew_s", W, default=300.0, positive=True),
        sustained_pings=c.integer(t, "sustained_pings", W, default=3, minimum=0),
        max_speed_mps=c.number(t, "max_speed_mps", W, default=50.0, positive=True),
        fusion=c.boolean(t, "fusion", W, default=True),
        confidence=_confidence(c, t, W),
        acc_sigmas=c.number(t, "acc_sigmas", W, default=2.0, positive=True),
        acc_scale=MappingProxyType(scale),
    )


def _confidence(c: Collector, t: dict, where: str) -> float:
    v = c.number(t, "confidence", where, default=0.9, positive=True)
    if v is not None and not 0.5 < v < 1.0:
        c.err(where, "confidence", f"must be between 0.5 and 1 (exclusive), not {v}")
        return 0.9
    return v


def parse_ingest(c: Collector, doc: dict) -> IngestConfig:
    g = section(c, doc, "ingest")
    return IngestConfig(
        owntracks=c.boolean(g, "owntracks", "[ingest]", default=False),
        owntracks_cmd=c.boolean(g, "owntracks_cmd", "[ingest]", default=True),
        max_payload_bytes=c.integer(g, "max_payload_bytes", "[ingest]", default=16384, minimum=64),
        shed_above=c.integer(g, "shed_above", "[ingest]", default=5000, minimum=1),
        stages=c.boolean(g, "stages", "[ingest]", default=False),
    )


def parse_offers(c: Collector, doc: dict) -> OffersConfig:
    o = section(c, doc, "offers")
    W = "[offers]"
    return OffersConfig(
        ttl_s=c.number(o, "ttl_s", W, default=900.0, positive=True),
        per_visit_cap=c.integer(o, "per_visit_cap", W, default=0, minimum=0),
        min_gap_s=c.number(o, "min_gap_s", W, default=0.0, minimum=0),
        daily_cap=c.integer(o, "daily_cap", W, default=0, minimum=0),
        global_holdout_pct=c.number(o, "global_holdout_pct", W, default=0.0, minimum=0, maximum=100),
        code_ttl_s=c.number(o, "code_ttl_s", W, default=86400.0, positive=True),
        attribution_window_s=c.number(o, "attribution_window_s", W, default=7200.0, positive=True),
        scores=c.string(o, "scores", W, default=None, nonempty=True),
        explore_pct=c.number(o, "explore_pct", W, default=0.0, minimum=0, maximum=100),
    )


def parse_privacy(c: Collector, doc: dict) -> PrivacyConfig:
    pv = section(c, doc, "privacy")
    W = "[privacy]"
    return PrivacyConfig(
        anonymous_offers=c.boolean(pv, "anonymous_offers", W, default=True),
        anonymous_tracking=c.boolean(pv, "anonymous_tracking", W, default=False),
        position_retention_s=c.number(pv, "position_retention_s", W, default=86400.0, minimum=0),
    )


def parse_sync(c: Collector, doc: dict) -> SyncConfig:
    s = section(c, doc, "sync")
    W = "[sync]"
    central_url = c.string(s, "central_url", W, nonempty=True)
    if central_url is not None:
        u = urllib.parse.urlsplit(central_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            c.err(W, "central_url", f"must be an http:// or https:// URL, not {central_url!r}")
            central_url = None
    transport = c.string(s, "transport", W, default="http", choices=("http", "mqtt"))
    sync_mqtt_url = _mqtt_url(c, W, "mqtt_url", s.get("mqtt_url"))
    if transport == "mqtt" and s.get("mqtt_url") is None:
        c.err(W, "mqtt_url", "is required when transport = \"mqtt\"")
    return SyncConfig(
        central_url=central_url,
        token=c.string(s, "token", W, nonempty=True, token=True),
        interval_s=c.number(s, "interval_s", W, default=5.0, positive=True),
        transport=transport,
        mqtt_url=sync_mqtt_url,
        encoding=c.string(s, "encoding", W, default="json", choices=("json", "msgpack")),
        batch_size=c.integer(s, "batch_size", W, default=500, minimum=1),
        max_outbox_mb=c.number(s, "max_outbox_mb", W, default=256.0, positive=True),
        timeout_s=c.number(s, "timeout_s", W, default=10.0, positive=True),
        retention_days=c.number(s, "retention_days", W, default=30.0, positive=True),
    )


def parse_associates(c: Collector, doc: dict) -> AssociatesConfig:
    a = section(c, doc, "associates")
    W = "[associates]"
    roles: dict[str, tuple[str, ...]] = {}
    raw_roles = a.get("roles", {})
    if not isinstance(raw_roles, dict):
        c.err(W, "roles", f"must be a table role -> list of zone ids, not {type_name(raw_roles)}")
    else:
        for role in raw_roles:
            if not ID_RE.fullmatch(role) or role in ("all", "claim"):
                c.err("[associates.roles]", role, "role names may only contain letters, digits, '.', '_', '-' "
                                                  "and must not be 'all' or 'claim' (topics {R}/alert/all, "
                                                  "{R}/alert/claim)")
                continue
            zones = c.str_list(raw_roles, role, "[associates.roles]")
            roles[role] = zones
    return AssociatesConfig(
        token=c.string(a, "token", W, nonempty=True, token=True),
        roles=MappingProxyType(roles),
        escalate_after_s=c.number(a, "escalate_after_s", W, default=120.0, positive=True),
        dedupe_window_s=c.number(a, "dedupe_window_s", W, default=900.0, minimum=0),
        assist_dwell_s=c.number(a, "assist_dwell_s", W, default=180.0, positive=True),
        vip_arrival=c.boolean(a, "vip_arrival", W, default=True),
        stock_out=c.boolean(a, "stock_out", W, default=True),
    )


def check_roles(associates: AssociatesConfig, fence_ids: Iterable[str], *, file: str
                ) -> tuple[list[Problem], list[Problem]]:
    """``[associates.roles]`` against the layout: ``(errors, warnings)`` for
    unknown fence ids and for roles named like a fence."""
    ids = set(fence_ids)
    errors: list[Problem] = []
    warnings: list[Problem] = []
    for role, zones in associates.roles.items():
        missing = [z for z in zones if z not in ids]
        if missing:
            errors.append(Problem(file, "[associates.roles]", role, f"unknown fence id(s): {', '.join(missing)}"))
        if role in ids:
            warnings.append(Problem(file, "[associates.roles]", role,
                                    "role has the same name as a fence; alerts to either share a topic",
                                    severity="warning"))
    return errors, warnings


def parse_reload(c: Collector, doc: dict) -> ReloadConfig:
    rl = section(c, doc, "reload")
    return ReloadConfig(poll_s=c.number(rl, "poll_s", "[reload]", default=2.0, minimum=0))


def parse_shop(c: Collector, doc: dict) -> ShopConfig:
    s = section(c, doc, "shop")
    W = "[shop]"
    text: dict[str, str] = {}
    raw = s.get("text", {})
    if not isinstance(raw, dict):
        c.err(W, "text", f"must be a table label -> text, not {type_name(raw)}")
    else:
        for k, v in raw.items():
            if isinstance(v, str):
                text[k] = v
            else:
                c.err("[shop.text]", k, f"must be a string, not {type_name(v)}")
    return ShopConfig(language=c.string(s, "language", W, default="en", nonempty=True),
                      text=MappingProxyType(text))


def parse_delivery(c: Collector, doc: dict) -> DeliveryConfig:
    d = section(c, doc, "delivery")
    W = "[delivery]"
    return DeliveryConfig(
        webhook_url=_http_url(c, W, "webhook_url", c.string(d, "webhook_url", W, nonempty=True)),
        webhook_token=c.string(d, "webhook_token", W, nonempty=True, token=True),
        timeout_s=c.number(d, "timeout_s", W, default=10.0, positive=True),
        retry_s=c.number(d, "retry_s", W, default=1.0, positive=True),
    )


def parse_floor(c: Collector, doc: dict) -> FloorConfig:
    f = section(c, doc, "floor")
    W = "[floor]"
    d = FloorConfig()
    floor = FloorConfig(
        publish_s=c.number(f, "publish_s", W, default=d.publish_s, positive=True),
        sustain_s=c.number(f, "sustain_s", W, default=d.sustain_s, minimum=0),
        visit_s=c.number(f, "visit_s", W, default=d.visit_s, positive=True),
        engaged_s=c.number(f, "engaged_s", W, default=d.engaged_s, positive=True),
    )
    if floor.engaged_s < floor.visit_s:
        c.err(W, "engaged_s", f"must be ≥ visit_s ({floor.visit_s:g}), not {floor.engaged_s:g}")
    return floor


def parse_pos(c: Collector, doc: dict) -> PosConfig:
    """``[pos]``: the tills' Bearer token for ``POST /v1/pos/redeem`` and ``/v1/pos/purchase``."""
    p = section(c, doc, "pos")
    return PosConfig(token=c.string(p, "token", "[pos]", nonempty=True, token=True))

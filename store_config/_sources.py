"""``[sources.*]`` and ``[[floorplans]]`` of ``store.toml``: validated once.

``[sources.NAME]`` tables stay raw mappings on :class:`StoreConfig` (the
adapters in ``edge_agent.http.sources`` read them), but every key an adapter reads
is checked here, so a bad value is a :class:`Problem` naming the field, not a
failure at the first webhook.  Pure.
"""

from __future__ import annotations

import math
import re
from types import MappingProxyType
from typing import Any, Mapping

from geometry.floorplans import UNITS, PlanTransform

from ._checks import Collector, type_name
from .model import FloorPlan

__all__ = ["parse_sources", "parse_floorplans", "SOURCE_KEYS"]

MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

SOURCE_KEYS = {
    "meraki": {"secret", "validator", "aps", "ap_acc", "min_acc"},
    "aruba": {"topic", "token", "min_acc"},
    "ble": {"path_loss_exponent", "strongest", "min_acc", "rssi_sigma_db", "model"},
}


def _topic_filter_ok(t: str) -> bool:
    if not t or "\x00" in t:
        return False
    levels = t.split("/")
    for i, lv in enumerate(levels):
        if "#" in lv and (lv != "#" or i != len(levels) - 1):
            return False
        if "+" in lv and lv != "+":
            return False
    return True


def parse_sources(c: Collector, src: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Check each ``[sources.NAME]`` table; return normalised read-only copies.

    Normalised: Meraki AP MACs lower-cased with their ``x``/``y`` as floats and
    ``floor`` as int; defaults filled in for every key an adapter reads.
    """
    out: dict[str, Mapping[str, Any]] = {}
    for sname, table in src.items():
        W = f"[sources.{sname}]"
        if not isinstance(table, dict):
            c.err(W, "", f"must be a table, not {type_name(table)}")
            continue
        norm = dict(table)
        if sname in SOURCE_KEYS:
            c.unknown_keys(table, SOURCE_KEYS[sname], W)
        if sname == "meraki":
            c.string(table, "secret", W, required=True, nonempty=True)
            c.string(table, "validator", W, required=True, nonempty=True)
            norm["ap_acc"] = c.number(table, "ap_acc", W, default=10.0, positive=True)
            norm["min_acc"] = c.number(table, "min_acc", W, default=1.0, minimum=0)
            aps: dict[str, Mapping[str, Any]] = {}
            raw_aps = table.get("aps", {})
            if not isinstance(raw_aps, dict):
                c.err(W, "aps", f"must be a table AP MAC -> {{x, y, floor}}, not {type_name(raw_aps)}")
                raw_aps = {}
            for mac, ap in raw_aps.items():
                WA = f'[sources.meraki.aps] "{mac}"'
                if not MAC_RE.fullmatch(mac.lower()):
                    c.err(WA, "", "key must be an AP MAC address such as \"aa:bb:cc:dd:ee:ff\"")
                    continue
                if not isinstance(ap, dict):
                    c.err(WA, "", f"must be a table {{x, y, floor}}, not {type_name(ap)}")
                    continue
                c.unknown_keys(ap, {"x", "y", "floor"}, WA)
                x = c.number(ap, "x", WA, required=True)
                y = c.number(ap, "y", WA, required=True)
                fl = c.integer(ap, "floor", WA, default=0, minimum=-20, maximum=200)
                if x is not None and y is not None and fl is not None:
                    aps[mac.lower()] = MappingProxyType({"x": x, "y": y, "floor": fl})
            norm["aps"] = MappingProxyType(aps)
        elif sname == "aruba":
            topic = c.string(table, "topic", W, nonempty=True)
            if topic is not None and not _topic_filter_ok(topic):
                c.err(W, "topic", f"{topic!r} is not a valid MQTT topic filter")
            norm["topic"] = topic
            norm["token"] = c.string(table, "token", W, nonempty=True, token=True)
            norm["min_acc"] = c.number(table, "min_acc", W, default=1.0, minimum=0)
        elif sname == "ble":
            norm["path_loss_exponent"] = c.number(table, "path_loss_exponent", W, default=2.0,
                                                  minimum=1.0, maximum=6.0)
            norm["strongest"] = c.integer(table, "strongest", W, default=8, minimum=1, maximum=64)
            norm["min_acc"] = c.number(table, "min_acc", W, default=1.5, minimum=0)
            norm["rssi_sigma_db"] = c.number(table, "rssi_sigma_db", W, default=6.0, positive=True)
            norm["model"] = c.string(table, "model", W, nonempty=True)
        out[sname] = MappingProxyType(norm)
    return out


def _origin(c: Collector, obj: dict, where: str) -> tuple[float, float] | None:
    v = obj.get("origin", [0.0, 0.0])
    if isinstance(v, dict):
        v = [v.get("x"), v.get("y")]
    if (not isinstance(v, list) or len(v) != 2
            or not all(isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) for n in v)):
        c.err(where, "origin", "must be [x, y] in local metres (or {x = .., y = ..})")
        return None
    return float(v[0]), float(v[1])


def parse_floorplans(c: Collector, raw: Any) -> tuple[FloorPlan, ...]:
    """``[[floorplans]]``: an array of tables, each mapping one vendor plan.

    Keys: ``id`` and/or ``name`` (at least one; matched against Meraki
    ``floorPlanId``/``floorPlanName`` and Aruba ``floor_id``), ``floor`` (int,
    default 0), ``units`` (``metres`` | ``feet`` | ``pixels``, default metres),
    ``scale`` (pixels per metre; required for pixels), ``origin`` ([x, y] local
    metres of the plan's origin, default [0, 0]), ``rotation`` (degrees
    counter-clockwise from local +x to the plan's +x, default 0), ``flip_y``
    (true when the plan's y grows downwards, default false).
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        c.err("[[floorplans]]", "", f"must be an array of tables ([[floorplans]]), not {type_name(raw)}")
        return ()
    plans: list[FloorPlan] = []
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    known = {"id", "name", "floor", "units", "scale", "origin", "rotation", "flip_y"}
    for i, t in enumerate(raw):
        W = f"[[floorplans]] #{i}"
        if not isinstance(t, dict):
            c.err(W, "", f"must be a table, not {type_name(t)}")
            continue
        if isinstance(t.get("id"), str) and t["id"]:
            W = f'[[floorplans]] "{t["id"]}"'
        elif isinstance(t.get("name"), str) and t["name"]:
            W = f'[[floorplans]] "{t["name"]}"'
        c.unknown_keys(t, known, W)
        pid = c.string(t, "id", W, nonempty=True)
        name = c.string(t, "name", W, nonempty=True)
        ok = True
        if pid is None and name is None:
            c.err(W, "id", "a floor plan needs an 'id' and/or a 'name' to be matched by")
            ok = False
        if pid is not None:
            if pid in seen_ids:
                c.err(W, "id", f"duplicate floor plan id {pid!r}")
                ok = False
            seen_ids.add(pid)
        if name is not None:
            if name in seen_names:
                c.err(W, "name", f"duplicate floor plan name {name!r}")
                ok = False
            seen_names.add(name)
        floor = c.integer(t, "floor", W, default=0, minimum=-20, maximum=200)
        units_raw = t.get("units", "metres")
        units = UNITS.get(units_raw.strip().lower()) if isinstance(units_raw, str) else None
        if units is None:
            c.err(W, "units", f"must be 'metres', 'feet' or 'pixels', not {units_raw!r}")
            ok = False
        scale = c.number(t, "scale", W, positive=True)
        if units == "pixels" and scale is None and "scale" not in t:
            c.err(W, "scale", "is required when units = \"pixels\" (pixels per metre)")
            ok = False
        if units != "pixels" and "scale" in t:
            c.warn(W, "scale", "only used when units = \"pixels\" (ignored)")
        origin = _origin(c, t, W)
        rotation = c.number(t, "rotation", W, default=0.0)
        flip_y = c.boolean(t, "flip_y", W, default=False)
        if not ok or origin is None or floor is None or rotation is None or (units == "pixels" and scale is None):
            continue
        plans.append(FloorPlan(id=pid, name=name, floor=floor,
                               transform=PlanTransform(units=units, scale=scale, origin=origin,
                                                       rotation=rotation % 360.0, flip_y=flip_y)))
    return tuple(plans)

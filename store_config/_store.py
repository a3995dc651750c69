"""``[store]`` and ``[store.anchor]`` of ``store.toml``: the store's id, name,
time zone, anchor and the files it names.  Pure (it only asks whether the
named files exist).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ._checks import ID_RE, Collector, check_timezone, type_name
from ._sections import section
from .model import Anchor

__all__ = ["StoreSection", "parse_store", "FILE_KEYS"]

# The files [store] names: key -> required.
FILE_KEYS = (("layout", True), ("promotions", True), ("profiles", False), ("inventory", False))


@dataclass(frozen=True, slots=True)
class StoreSection:
    """What ``[store]`` says; a value is None when it is missing or wrong
    (the problem is in the collector)."""

    store_id: str | None
    name: str | None
    timezone: str | None
    tz_ok: bool
    anchor: Anchor | None
    files: Mapping[str, Path | None]  # layout, promotions, profiles, inventory


def _parse_anchor(c: Collector, anchor_t: object) -> Anchor | None:
    if not isinstance(anchor_t, dict):
        c.err("[store.anchor]", "", "section is required (lat, lon, bearing)" if anchor_t is None
              else f"must be a table, not {type_name(anchor_t)}")
        return None
    c.unknown_keys(anchor_t, {"lat", "lon", "bearing"}, "[store.anchor]")
    lat = c.number(anchor_t, "lat", "[store.anchor]", required=True, minimum=-90, maximum=90)
    lon = c.number(anchor_t, "lon", "[store.anchor]", required=True, minimum=-180, maximum=180)
    bearing = c.number(anchor_t, "bearing", "[store.anchor]", default=0.0)
    if lat is None or lon is None or bearing is None:
        return None
    return Anchor(lat=lat, lon=lon, bearing=bearing % 360.0)


def parse_store(c: Collector, doc: dict, base: Path) -> StoreSection:
    """``[store]``: required; ``id`` is used in topics, ``timezone`` must be an
    IANA key, the file paths are relative to ``base`` (the toml's directory)."""
    st = section(c, doc, "store")
    if "store" not in doc:
        c.err("[store]", "", "section is required")
    store_id = c.string(st, "id", "[store]", required=True, nonempty=True)
    if store_id is not None and not ID_RE.fullmatch(store_id):
        c.err("[store]", "id", f"{store_id!r} may only contain letters, digits, '.', '_' and '-' (used in topics)")
        store_id = None
    name = c.string(st, "name", "[store]", default=None)
    timezone = c.string(st, "timezone", "[store]", required=True, nonempty=True)
    tz_ok = False
    if timezone is not None:
        err = check_timezone(timezone)
        if err:
            c.err("[store]", "timezone", err)
        else:
            tz_ok = True
    anchor = _parse_anchor(c, st.get("anchor"))

    files: dict[str, Path | None] = {}
    for key, required in FILE_KEYS:
        rel = c.string(st, key, "[store]", required=required, nonempty=True)
        files[key] = None
        if rel is not None:
            p = base / rel
            if not p.is_file():
                c.err("[store]", key, f"file not found: {p}")
            else:
                files[key] = p
    return StoreSection(store_id=store_id, name=name, timezone=timezone, tz_ok=tz_ok, anchor=anchor,
                        files=files)

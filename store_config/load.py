"""Load and validate a store configuration.

:func:`load_store` reads ``store.toml`` and the files it references and
returns one frozen :class:`~store_config.model.StoreConfig`, or raises
:class:`~store_config.model.ConfigError` listing *every* problem found (each a
:class:`~store_config.model.Problem` naming file, object and field).

One parser per section, each in its own module; this one composes them:

- ``_store.py``      ``[store]``, ``[store.anchor]`` and the files named there;
- ``_sections.py``   ``[mqtt]``, ``[http]``, ``[data]``, ``[tracking]``, ``[ingest]``,
  ``[offers]``, ``[privacy]``, ``[sync]``, ``[associates]``, ``[reload]``, ``[shop]``,
  ``[delivery]``, ``[pos]``;
- ``_sources.py``    ``[sources.*]`` and ``[[floorplans]]``;
- ``_layout.py``     ``layout.geojson`` (:func:`parse_layout`);
- ``_promotions.py`` ``promotions.json`` (:func:`parse_promotions`, :func:`cross_check`);
- ``_profiles.py``   ``profiles.json`` (:func:`parse_profiles`);
- ``_inventory.py``  ``inventory.json`` (:func:`parse_inventory`).

The file parsers take already-parsed JSON values so that central bundles
and hot reloads validate exactly the same way.

Pure: no clock reads, no sockets.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from . import _sections as sections
from ._checks import Collector, check_timezone, raise_if
from ._inventory import parse_inventory
from ._layout import MAX_LAYOUT_EXTENT_M, parse_layout, raw_fence_ids
from ._profiles import parse_profiles
from ._promotions import cross_check, cross_check_raw, never_matching, parse_hours, parse_promotions, parse_scores
from ._sources import parse_floorplans, parse_sources
from ._store import parse_store
from .model import Beacon, ConfigError, Fence, Problem, Profile, Promotion, StoreConfig

__all__ = [
    "load_store",
    "parse_layout",
    "parse_promotions",
    "parse_scores",
    "parse_profiles",
    "parse_inventory",
    "cross_check",
    "never_matching",
    "config_version",
    "check_timezone",
    "parse_hours",
    "MAX_LAYOUT_EXTENT_M",
]

# Kept importable from here: sync.downlink checks a bundle's raw promotions with it.
_cross_check_raw = cross_check_raw


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_version(parts: Mapping[str, Any]) -> str:
    """A short stable hash (sha256 hex[:12]) of the canonical content of
    ``parts`` (name -> parsed file content).  Formatting and key order in the
    files do not change it; any value does."""
    return hashlib.sha256(_canonical(dict(parts)).encode("utf-8")).hexdigest()[:12]


def _read_toml(path: Path) -> dict:
    toml_file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(toml_file, "", "", f"cannot read store config: {exc.strerror or exc}")]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(toml_file, "", "", f"not valid TOML: {exc}")]) from None


def _load_json(c: Collector, path: Path, key: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        c.err("[store]", key, f"cannot read {path}: {exc.strerror or exc}")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        c.problems.append(Problem(str(path), f"line {exc.lineno} column {exc.colno}", "",
                                  f"not valid JSON: {exc.msg}"))
        return None


def _load_layout(st, run: Callable[[str, Callable[[Any, str], Any]], Any],
                 warnings: list[Problem]) -> tuple[tuple[Fence, ...], tuple[Beacon, ...], Any, bool]:
    """``layout.geojson`` through ``run``: ``(fences, beacons, outline, layout_ok)``;
    empty and ``False`` when there is no anchor or the layout has errors."""
    fences: tuple[Fence, ...] = ()
    beacons: tuple[Beacon, ...] = ()
    outline = None
    layout_ok = False
    if st.anchor is not None:
        anchor = st.anchor
        res = run("layout", lambda obj, f: parse_layout(obj, file=f, anchor=anchor, warnings=warnings))
        if res is not None:
            fences, beacons, outline = res
            layout_ok = True
    return fences, beacons, outline, layout_ok


def _load_scores(sp: Path, parts: dict[str, Any], problems: list[Problem]) -> Any:
    """The ``[offers] scores`` file at ``sp``, parsed, or ``None``; its problems
    go to ``problems`` and its content to ``parts`` (for the version hash)."""
    scores = None
    lc = Collector(str(sp))
    obj = _load_json(lc, sp, "scores") if sp.is_file() else None
    if not sp.is_file():
        lc.err("[offers]", "scores", f"file not found: {sp}")
    problems.extend(lc.problems)
    if obj is not None:
        parts["scores"] = obj
        try:
            scores = parse_scores(obj, file=str(sp))
        except ConfigError as exc:
            problems.extend(exc.problems)
    return scores


def load_store(path: str | Path, *, ble_model: bool = True) -> StoreConfig:
    """Load ``store.toml`` and the files it names; validate everything once.

    Returns a frozen :class:`StoreConfig` (``warnings`` holds non-fatal
    problems such as unknown keys) or raises :class:`ConfigError` listing
    every error found in every file.  ``ble_model=False`` leaves the fitted
    BLE model file unread (``survey fit`` replaces it, whatever it holds).
    """
    path = Path(path)
    toml_file = str(path)
    doc = _read_toml(path)
    base = path.resolve().parent

    # store.toml, section by section (problems in the order of the sections)
    c = Collector(toml_file)
    sections.warn_unknown_sections(c, doc)
    st = parse_store(c, doc, base)
    mqtt = sections.parse_mqtt(c, doc, base)
    http = sections.parse_http(c, doc, base)
    data_dir = sections.parse_data(c, doc, base)
    tracking = sections.parse_tracking(c, doc)
    ingest = sections.parse_ingest(c, doc)
    offers = sections.parse_offers(c, doc)
    privacy = sections.parse_privacy(c, doc)
    sync = sections.parse_sync(c, doc)
    associates = sections.parse_associates(c, doc)
    reload_cfg = sections.parse_reload(c, doc)
    shop = sections.parse_shop(c, doc)
    delivery = sections.parse_delivery(c, doc)
    floor = sections.parse_floor(c, doc)
    pos = sections.parse_pos(c, doc)
    sources = parse_sources(c, sections.section(c, doc, "sources"))
    floorplans = parse_floorplans(c, doc.get("floorplans"))

    # the files it names
    parts: dict[str, Any] = {"store.toml": doc}
    problems = list(c.problems)
    warnings: list[Problem] = list(c.warnings)

    def run(key: str, fn: Callable[[Any, str], Any]) -> Any:
        p = st.files.get(key)
        if p is None:
            return None
        lc = Collector(str(p))
        obj = _load_json(lc, p, key)
        problems.extend(lc.problems)
        if obj is None:
            return None
        parts[key] = obj
        try:
            return fn(obj, str(p))
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None

    fences, beacons, outline, layout_ok = _load_layout(st, run, warnings)
    # When the layout has errors, still check references against the ids it names.
    fence_ids = {f.id for f in fences} if layout_ok else raw_fence_ids(parts.get("layout"))
    timezone = st.timezone if st.tz_ok else "UTC"
    promotions: tuple[Promotion, ...] = run(
        "promotions", lambda obj, f: parse_promotions(obj, file=f, timezone=timezone, warnings=warnings)) or ()
    if fence_ids is not None and isinstance(parts.get("promotions"), list):
        # on the raw list, so references are checked even when a promotion has other errors
        problems.extend(cross_check_raw(fence_ids, parts["promotions"], file=str(st.files["promotions"])))
    if layout_ok:
        problems.extend(never_matching(fences, promotions, file=str(st.files["promotions"])))
    profiles: dict[str, Profile] = run(
        "profiles", lambda obj, f: parse_profiles(obj, file=f, warnings=warnings)) or {}
    inventory: dict[str, int] = run("inventory", lambda obj, f: parse_inventory(obj, file=f)) or {}
    scores = _load_scores(path.parent / offers.scores, parts, problems) if offers.scores is not None else None
    if fence_ids is not None:
        errors, warns = sections.check_roles(associates, fence_ids, file=toml_file)
        problems.extend(errors)
        warnings.extend(warns)

    if ble_model:
        ble_model, model_file = _ble_model(sources, base, beacons if layout_ok else None, problems, parts, warnings)
    else:
        named = (sources.get("ble") or {}).get("model")
        ble_model, model_file = None, (base / named) if named else base / BLE_MODEL_FILE

    raise_if(problems)
    assert st.store_id is not None and st.timezone is not None and st.anchor is not None
    return StoreConfig(
        path=path.resolve(),
        store_id=st.store_id,
        name=st.name if st.name is not None else st.store_id,
        timezone=st.timezone,
        anchor=st.anchor,
        fences=fences,
        beacons=beacons,
        promotions=promotions,
        profiles=MappingProxyType(profiles),
        inventory=MappingProxyType(inventory),
        mqtt=mqtt,
        http=http,
        tracking=tracking,
        ingest=ingest,
        offers=offers,
        privacy=privacy,
        sync=sync,
        associates=associates,
        shop=shop,
        delivery=delivery,
        reload=reload_cfg,
        floor=floor,
        pos=pos,
        scores=scores,
        data_dir=data_dir,
        outline=outline,
        warnings=tuple(warnings),
        version=config_version(parts),
        sources=MappingProxyType(sources),
        floorplans=floorplans,
        files=MappingProxyType({"store": toml_file,
                                **{k: str(v) for k, v in st.files.items() if v is not None},
                                "ble_model": str(model_file)}),
        ble_model=ble_model,
    )


BLE_MODEL_FILE = "ble-model.json"


def _ble_model(sources, base: Path, beacons, problems: list, parts: dict, warnings: list):
    """The store's fitted BLE model: ``[sources.ble] model`` (relative to
    store.toml) or ``ble-model.json`` beside it when that exists.  Returns
    ``(model dict or None, path)``; the path is always watched for reload."""
    from geometry.radio import BleModel

    named = (sources.get("ble") or {}).get("model")
    path = (base / named) if named else base / BLE_MODEL_FILE
    if not path.exists():
        if named:
            warnings.append(Problem(str(path), "", "", "BLE model file not found ([sources.ble] model): "
                                    "positioning with the no-survey defaults until `edge-agent survey fit` "
                                    "writes it"))
        return None, path
    lc = Collector(str(path))
    obj = _load_json(lc, path, "model")
    problems.extend(lc.problems)
    if obj is None:
        return None, path
    try:
        model = BleModel.from_dict(obj)
    except ValueError as exc:
        problems.append(Problem(str(path), "", "", str(exc)))
        return None, path
    if beacons is not None:
        known = {b.beacon_id.lower() for b in beacons}
        missing = [b for b in model.ids if b not in known]
        if missing:
            problems.append(Problem(str(path), "beacons", "", f"beacon {missing[0]!r} of the BLE model is not in "
                                    f"the layout ({len(missing)} such); refit with `edge-agent survey fit`"))
            return None, path
    parts["ble_model"] = obj
    return MappingProxyType(obj), path

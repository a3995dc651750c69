"""Positioning technologies as sensor models: what a phone or location engine
would publish for a shopper's true path.

Each model has an update interval, a position error, the accuracy it
reports, dropouts (a sample that is never sent) and latency (sample time to
publish time).  ``ts`` in a ping is always the *sample* time.

========  =======  ============================  ===============  ========  ===========
tech      source   error                         reported acc     every     latency
========  =======  ============================  ===============  ========  ===========
exact     uwb      none                          0.1 m            1 s       0
uwb       uwb      N(0, 0.15 m) per axis         0.3 m            0.5 s     20–50 ms
ble       ble      RSSI per beacon (below)       (agent's)        1–2 s     50–300 ms
wifi      wifi     N(0, 4 m) per axis            5–10 m           5–15 s    1–3 s
html5     html5    N(0, acc/2) per axis          15–40 m          1–5 s     0.2–1 s
========  =======  ============================  ===============  ========  ===========

* ``ble``: real radio, fitted to public labelled scans (BENCHMARKS.md, "Real
  radio"): for every beacon on the floor, RSSI = ``tx_power + offset -
  10 n log10(d)`` with ``n = 1.8``, a fixed per-beacon ``offset`` (σ 2.5 dB:
  the real sets' per-beacon spread was 1.5-2.3 dB), Student-t noise (ν 4,
  scale 5.5 dB: their residuals have σ 4.9-6.7 dB and heavy tails), rounded
  to 1 dB; a beacon is heard with probability ``0.9 · Φ((mean RSSI + 92) /
  5)`` (a phone's scan misses ~10 % of beacons in range, and fades out around
  -92 dBm).  With a store's fitted model (``survey fit``: ``[sources.ble]
  model``) the mean RSSI, the heard rate and the spread per cell come from
  that model instead.  The ping carries the ``beacons`` list and the agent
  positions it.
* ``html5``: 3 % of fixes are far outdoor fixes (an error of 60–300 m
  reported with a confident 5–15 m accuracy), as phones do near windows.
* dropouts: uwb 1 %, ble 3 %, wifi 5 %, html5 2 %.

Pure: no I/O, no clock.  Every shopper draws from its own seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TECHS", "Sample", "sample_shopper", "device_schedule", "reported_fixes"]


@dataclass(frozen=True, slots=True)
class Tech:
    name: str
    source: str
    interval: tuple[float, float]
    dropout: float
    latency: tuple[float, float]


TECHS = {
    "exact": Tech("exact", "uwb", (1.0, 1.0), 0.0, (0.0, 0.0)),
    "uwb": Tech("uwb", "uwb", (0.5, 0.5), 0.01, (0.02, 0.05)),
    "ble": Tech("ble", "ble", (1.0, 2.0), 0.03, (0.05, 0.3)),
    "wifi": Tech("wifi", "wifi", (5.0, 15.0), 0.05, (1.0, 3.0)),
    "html5": Tech("html5", "html5", (1.0, 5.0), 0.02, (0.2, 1.0)),
}

BLE_N = 1.8
BLE_OFFSET_DB = 2.5
BLE_NOISE_DB = 5.5
BLE_NU = 4.0
BLE_SENSITIVITY_DBM = -92.0
BLE_SENS_WIDTH_DB = 5.0
BLE_MISS = 0.10
BLE_FLOOR_DBM = -105.0


def _ndtr(z):
    from math import erf, sqrt

    return 0.5 * (1.0 + np.vectorize(erf, otypes=[float])(np.asarray(z) / sqrt(2.0)))


def ble_rssi(xs, ys, beacons, rng, *, model=None, seed: int = 0):
    """``(rssi, heard)`` arrays (samples x beacons) for true positions ``xs, ys``
    and layout ``beacons`` (one floor): the real-radio model above, or the
    store's fitted :class:`geometry.radio.BleModel` when given."""
    bx = np.array([b.x for b in beacons])
    by = np.array([b.y for b in beacons])
    n = len(xs)
    if model is not None:
        fl = int(beacons[0].floor)
        g = model.floors[fl]
        cols = [int(np.flatnonzero(g.cols == model.index[b.beacon_id.lower()])[0]) for b in beacons]
        ix = np.clip(((np.asarray(xs) - g.x0) // model.params.cell).astype(int), 0, g.nx - 1)
        iy = np.clip(((np.asarray(ys) - g.y0) // model.params.cell).astype(int), 0, g.ny - 1)
        c = ix + g.nx * iy
        mean = g.mu[np.ix_(c, cols)]
        sig = g.sig[c][:, None]
        pd = 1.0 / (1.0 + np.exp(-g.gain[np.ix_(c, cols)]))
        rssi = mean + sig * rng.standard_t(model.params.nu, mean.shape)
    else:
        # the per-beacon offsets are the store's (fixed per beacon and seed), not the shopper's
        off = np.array([np.random.default_rng([seed, 0xB1E, *b.beacon_id.encode()]).normal(0, BLE_OFFSET_DB)
                        for b in beacons])
        tx = np.array([b.tx_power for b in beacons]) + off
        d = np.maximum(np.hypot(np.asarray(xs)[:, None] - bx[None, :], np.asarray(ys)[:, None] - by[None, :]), 0.5)
        mean = tx[None, :] - 10 * BLE_N * np.log10(d)
        rssi = mean + BLE_NOISE_DB * rng.standard_t(BLE_NU, mean.shape)
        pd = (1.0 - BLE_MISS) * _ndtr((mean - BLE_SENSITIVITY_DBM) / BLE_SENS_WIDTH_DB)
    # no receiver reports below its noise floor, however the fade went
    heard = (rng.uniform(size=mean.shape) < pd) & (rssi >= BLE_FLOOR_DBM)
    return np.round(np.minimum(rssi, 0.0)), heard


@dataclass(slots=True)
class Sample:
    """One sensor sample of one shopper.  ``payload`` is None when the sample
    was dropped (it still counts for ground truth)."""

    shopper: int
    device: str
    t: float  # sample time, simulated seconds from the start of the run
    pub: float  # publish time (t + latency)
    x: float  # true position
    y: float
    floor: int
    source: str
    payload: dict | None


def device_schedule(shopper, rng, *, mac_randomisation: bool) -> list[tuple[float, str]]:
    """``[(from_t, device_id), ...]`` for one shopper: one id, or with MAC
    randomisation a second one from a random moment mid-visit."""
    ids = [(-math.inf, "sim-" + rng.bytes(5).hex())]
    if mac_randomisation:
        a, b = shopper.arrive, shopper.leave
        ids.append((float(rng.uniform(a + 0.2 * (b - a), a + 0.8 * (b - a))), "sim-" + rng.bytes(5).hex()))
    return ids


def _times(tech: Tech, start: float, end: float, rng) -> np.ndarray:
    lo, hi = tech.interval
    out = []
    t = start + float(rng.uniform(0, hi))
    while t <= end:
        out.append(t)
        t += float(rng.uniform(lo, hi)) if hi > lo else lo
    return np.array(out)


def sample_shopper(shopper, tech_name: str, *, cfg, frame, seed: int, duration: float,
                   mac_randomisation: bool = False) -> list[Sample]:
    """Every sample of one shopper's visit (up to ``duration``)."""
    tech = TECHS[tech_name]
    rng = np.random.default_rng([seed, 0x5E45, shopper.index])
    schedule = device_schedule(shopper, rng, mac_randomisation=mac_randomisation)
    ts = _times(tech, shopper.arrive, min(shopper.leave, duration), rng)
    if ts.size == 0:
        return []
    xs, ys = shopper.position(ts)
    n = ts.size
    dropped = rng.uniform(size=n) < tech.dropout
    lat = rng.uniform(tech.latency[0], tech.latency[1], size=n) if tech.latency[1] > 0 else np.zeros(n)
    payloads: list[dict | None]
    if tech_name == "exact":
        payloads = [{"x": round(float(x), 3), "y": round(float(y), 3), "acc": 0.1} for x, y in zip(xs, ys)]
    elif tech_name == "uwb":
        ex, ey = rng.normal(0, 0.15, n), rng.normal(0, 0.15, n)
        payloads = [{"x": round(float(x), 3), "y": round(float(y), 3), "acc": 0.3}
                    for x, y in zip(xs + ex, ys + ey)]
    elif tech_name == "wifi":
        ex, ey = rng.normal(0, 4.0, n), rng.normal(0, 4.0, n)
        acc = rng.uniform(5.0, 10.0, n)
        payloads = [{"x": round(float(x), 2), "y": round(float(y), 2), "acc": round(float(a), 1)}
                    for x, y, a in zip(xs + ex, ys + ey, acc)]
    elif tech_name == "html5":
        acc = rng.uniform(15.0, 40.0, n)
        ex, ey = rng.normal(0, 1, n) * acc / 2, rng.normal(0, 1, n) * acc / 2
        far = rng.uniform(size=n) < 0.03
        ang = rng.uniform(0, 2 * math.pi, n)
        dist = rng.uniform(60.0, 300.0, n)
        ex = np.where(far, dist * np.cos(ang), ex)
        ey = np.where(far, dist * np.sin(ang), ey)
        acc = np.where(far, rng.uniform(5.0, 15.0, n), acc)
        lon, lat_deg = frame.to_wgs84(xs + ex, ys + ey)
        payloads = [{"coords": {"latitude": round(float(la), 7), "longitude": round(float(lo), 7),
                                "accuracy": round(float(a), 1)}}
                    for lo, la, a in zip(lon, lat_deg, acc)]
    elif tech_name == "ble":
        beacons = [b for b in cfg.beacons if b.floor == shopper.floor]
        if not beacons:
            raise ValueError("--tech ble needs BLE beacons (Point features with kind \"beacon\") in the layout")
        rssi, heard = ble_rssi(xs, ys, beacons, rng, model=_store_model(cfg), seed=seed)
        payloads = []
        for k in range(n):
            idx = np.flatnonzero(heard[k])
            if idx.size == 0:
                payloads.append(None)
                continue
            idx = idx[np.argsort(-rssi[k, idx], kind="stable")]
            payloads.append({"beacons": [{"id": beacons[j].beacon_id, "rssi": round(float(rssi[k, j]), 1)}
                                         for j in idx.tolist()]})
    else:  # pragma: no cover - the CLI restricts the choice
        raise ValueError(f"unknown tech {tech_name!r}")
    out = []
    for k in range(n):
        t = float(ts[k])
        device = schedule[0][1]
        for start, dev in schedule:
            if t >= start:
                device = dev
        payload = None if dropped[k] else payloads[k]
        out.append(Sample(shopper.index, device, t, t + float(lat[k]), float(xs[k]), float(ys[k]),
                          shopper.floor, tech.source, payload))
    return out


def _store_model(cfg):
    """The store's fitted BLE model, if it has one (built once per config)."""
    if getattr(cfg, "ble_model", None) is None:
        return None
    key = id(cfg.ble_model)
    m = _MODELS.get(key)
    if m is None:
        from geometry.radio import BleModel

        m = _MODELS[key] = (cfg.ble_model, BleModel.from_dict(cfg.ble_model))
    return m[1]


_MODELS: dict = {}


def reported_fixes(samples, *, cfg, frame) -> list[tuple[int, float, float, float, float]]:
    """``(shopper, t, x, y, acc)`` of every sent sample as the technology reports
    it, in local metres (for the map): ``x``/``y`` as published, HTML5 fixes
    projected back from WGS84, BLE sightings positioned as the agent does
    (:mod:`geometry.radio`: the store's fitted model, else the defaults)."""
    from geometry.radio import store_model

    model = store_model(cfg.beacons, cfg.sources.get("ble", {}),
                        cfg.outline.bounds if cfg.outline is not None else None, cfg.ble_model)
    out = []
    geo = []
    for s in samples:
        p = s.payload
        if p is None:
            continue
        if "x" in p:
            out.append((s.shopper, s.t, float(p["x"]), float(p["y"]), float(p.get("acc", 0.0))))
        elif "coords" in p:
            c = p["coords"]
            geo.append((s.shopper, s.t, c["longitude"], c["latitude"], float(c["accuracy"])))
        elif "beacons" in p:
            r = model.locate([(b["id"], b["rssi"]) for b in p["beacons"]])[0] if model is not None else None
            if r is not None:
                out.append((s.shopper, s.t, r[0], r[1], r[3]))
    if geo:
        xs, ys = frame.to_local(np.array([g[2] for g in geo]), np.array([g[3] for g in geo]))
        out += [(g[0], g[1], float(x), float(y), g[4]) for g, x, y in zip(geo, xs, ys)]
    return out

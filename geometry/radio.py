"""BLE positions with an honest accuracy: a likelihood over floor cells.

Why not ranges.  On real floors most scans hear one or two beacons (a
library floor: 64 % one, 29 % two), RSSI scatters 5-8 dB around any
path-loss curve, and each beacon carries its own offset.  A range fit then
gives a point with a made-up accuracy.  Here a scan is *evidence about every
cell of the floor*, heard beacons and silent ones alike, and the fix is what
that evidence supports.

The model, per floor, on a grid of ``cell``-metre cells (the beacons'
bounding box grown by ``margin``, or the bounds the store gives):

* **RSSI** of beacon ``b`` in cell ``c``: Student-t (``nu`` degrees of
  freedom: heavy tails, as real RSSI has) around ``mu[c, b]`` with scale
  ``sigma[c]``.  Without a survey ``mu = tx_b - 10 n log10(d)``; a survey
  fits ``tx_b`` per beacon and ``n``, and where its scans cover the floor
  adds their smoothed residual per cell (a fingerprint, shrunk towards the
  path-loss curve where few scans are near: ``delta = Σ w·e / (Σ w + k0)``,
  Gaussian kernel of ``kernel_m``).
* **Detection**: ``P(heard | c, b) = (1 - p_miss) · Φ((mu - sens_dbm) /
  sens_width_db)``, or the survey's smoothed heard rate where it has scans.
  A beacon in range is usually heard, so one that is *not* heard weighs
  against the cells near it: a single-beacon scan says "near B, and not near
  the beacons that stayed silent" -- a region, not a point.
* The posterior over cells is ``exp(temperature · log-likelihood)``
  (``temperature < 1`` because the beacons' errors are not independent: the
  same body blocks several); the fix is its mean, and ``acc`` the radius
  around the mean that holds 86.5 % of it (the 2σ radius of a 2-D Gaussian)
  times ``acc_scale[k]`` for ``k`` = 1, 2, 3+ beacons heard, floored at
  ``min_acc``.  ``acc_scale`` is what makes the claim honest: the fit sets it
  so that, on walks held out of the fit, ``acc`` covers the truth 86.5 % of
  the time per class; the defaults are fitted the same way on public data
  (BENCHMARKS.md, "Real radio").

Cost.  ``log P(not heard)`` summed over a floor's beacons is precomputed per
cell, so a scan costs ``cells × beacons heard``: ~1,200 cells × 3 for a
40 × 30 m floor at 1 m.  :func:`BleModel.locate_many` does a batch at once.

A beacon read several times in a scan counts once (its strongest reading);
every count here is of *distinct* beacons.

Pure: numpy, no I/O.  :meth:`BleModel.to_dict` / :meth:`BleModel.from_dict`
give the JSON the agent loads (``ble-model.json``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .beacons import distinct_readings

__all__ = ["NOMINAL", "FINGERPRINT_BEACONS", "RadioParams", "BleModel", "fit", "predict", "store_model",
           "distinct_readings", "heard_class"]

NOMINAL = 1.0 - math.exp(-2.0)  # P(r <= 2 sigma), 2-D isotropic Gaussian: 0.8647
# Distinct beacons from which a scan is a fingerprint (a fix whose error repeats while the phone
# stands still: geometry.fusion's correlated fixes); fewer is a proximity (a weak fix).  Also the
# last accuracy class: 1, 2, FINGERPRINT_BEACONS or more heard.
FINGERPRINT_BEACONS = 3
_CHUNK = 3_000_000  # elements per dense (scans x cells x beacons) block
MODEL_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RadioParams:
    """Parameters of the radio model (see the module docstring).  dB, dBm,
    metres.  The defaults are the no-survey model, fitted on public data."""

    n: float = 2.0
    sigma_db: float = 6.0
    nu: float = 4.0
    sens_dbm: float = -95.0
    sens_width_db: float = 10.0
    p_miss: float = 0.3
    temperature: float = 1.0
    acc_scale: tuple[float, float, float] = (0.696, 0.782, 0.946)
    cell: float = 1.0
    margin: float = 4.0
    min_acc: float = 1.0
    kernel_m: float = 1.0
    k0: float = 2.0

    def __post_init__(self):
        for k in ("n", "sigma_db", "nu", "sens_width_db", "temperature", "cell", "kernel_m", "k0"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be positive")
        if not 0 <= self.p_miss < 1:
            raise ValueError("p_miss must be in [0, 1)")
        if len(self.acc_scale) != 3 or not all(s > 0 for s in self.acc_scale):
            raise ValueError("acc_scale must be three positive numbers (1, 2, 3+ beacons heard)")


def heard_class(k) -> np.ndarray:
    """0, 1, 2 for 1, 2, 3+ distinct beacons heard."""
    return np.clip(np.asarray(k, dtype=np.int64), 1, FINGERPRINT_BEACONS) - 1


def _ndtr(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF (vectorised; erfc via numpy's polynomial-free route)."""
    z = np.asarray(z, dtype=float)
    # Abramowitz-Stegun 7.1.26 on |z|/sqrt2 (abs error < 1.5e-7): plenty for a detection curve
    t = np.abs(z) / math.sqrt(2.0)
    k = 1.0 / (1.0 + 0.3275911 * t)
    poly = k * (0.254829592 + k * (-0.284496736 + k * (1.421413741 + k * (-1.453152027 + k * 1.061405429))))
    erfc = poly * np.exp(-t * t)
    return np.where(z >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)


def _pathloss(tx: np.ndarray, n: float, d: np.ndarray) -> np.ndarray:
    return tx - 10.0 * n * np.log10(np.maximum(d, 0.5))


def _pdet(mu: np.ndarray, p: RadioParams) -> np.ndarray:
    return (1.0 - p.p_miss) * _ndtr((mu - p.sens_dbm) / p.sens_width_db)


@dataclass(slots=True)
class _Floor:
    x0: float
    y0: float
    nx: int
    ny: int
    cols: np.ndarray  # model beacon indices on this floor
    cx: np.ndarray = field(default=None)  # (C,)
    cy: np.ndarray = field(default=None)
    mu: np.ndarray = field(default=None)  # (C, Bf)
    sig: np.ndarray = field(default=None)  # (C,)
    gain: np.ndarray = field(default=None)  # (C, Bf): log P(heard) - log P(not heard)
    base: np.ndarray = field(default=None)  # (C,): sum_b log P(not heard)
    delta: np.ndarray | None = None  # survey: (C, Bf) dB added to the path-loss mean
    pdet: np.ndarray | None = None  # survey: (C, Bf) heard rate
    sig_c: np.ndarray | None = None  # survey: (C,) scale per cell
    pos: dict | None = None  # model beacon index -> column on this floor


class BleModel:
    """A store's BLE radio: beacons, parameters and (after a survey) the
    per-cell corrections.  Build with :meth:`from_beacons` (no survey),
    :func:`fit` (a survey) or :meth:`from_dict`."""

    def __init__(self, ids: Sequence[str], bx, by, floor, tx, params: RadioParams,
                 bounds: Mapping[int, tuple[float, float, float, float]] | None = None,
                 survey: Mapping[int, dict] | None = None, meta: Mapping[str, Any] | None = None):
        self.ids = tuple(str(i).lower() for i in ids)
        self.index = {b: i for i, b in enumerate(self.ids)}
        self.bx = np.asarray(bx, dtype=float)
        self.by = np.asarray(by, dtype=float)
        self.floor = np.asarray(floor, dtype=np.int64)
        self.tx = np.asarray(tx, dtype=float)
        self.params = params
        self.meta = dict(meta or {})
        self.floors: dict[int, _Floor] = {}
        bounds = dict(bounds or {})
        survey = dict(survey or {})
        for fl in sorted(set(self.floor.tolist())):
            cols = np.flatnonzero(self.floor == fl)
            s = survey.get(fl)
            if s is not None:
                g = _Floor(float(s["x0"]), float(s["y0"]), int(s["nx"]), int(s["ny"]), cols)
                g.delta = np.asarray(s["delta"], dtype=float).reshape(g.nx * g.ny, cols.size)
                g.pdet = np.asarray(s["pdet"], dtype=float).reshape(g.nx * g.ny, cols.size)
                g.sig_c = np.asarray(s["sigma"], dtype=float).reshape(g.nx * g.ny)
            else:
                b = bounds.get(fl)
                if b is None:
                    m = params.margin
                    b = (self.bx[cols].min() - m, self.by[cols].min() - m, self.bx[cols].max() + m,
                         self.by[cols].max() + m)
                c = params.cell
                nx = max(int(math.ceil((b[2] - b[0]) / c)), 1)
                ny = max(int(math.ceil((b[3] - b[1]) / c)), 1)
                g = _Floor(float(b[0]), float(b[1]), nx, ny, cols)
            self._build(g)
            self.floors[fl] = g

    # -- construction
    @classmethod
    def from_beacons(cls, beacons: Iterable[Any], params: RadioParams = RadioParams(),
                     bounds: Mapping[int, tuple[float, float, float, float]] | None = None) -> "BleModel":
        """The no-survey model of layout beacons (objects with ``beacon_id``,
        ``x``, ``y``, ``floor``, ``tx_power``)."""
        bs = list(beacons)
        return cls([b.beacon_id for b in bs], [b.x for b in bs], [b.y for b in bs], [b.floor for b in bs],
                   [b.tx_power for b in bs], params, bounds)

    def _build(self, g: _Floor) -> None:
        p = self.params
        c = p.cell
        ix, iy = np.meshgrid(np.arange(g.nx), np.arange(g.ny))
        g.cx = g.x0 + (ix.ravel() + 0.5) * c
        g.cy = g.y0 + (iy.ravel() + 0.5) * c
        d = np.hypot(g.cx[:, None] - self.bx[g.cols][None, :], g.cy[:, None] - self.by[g.cols][None, :])
        mu = _pathloss(self.tx[g.cols][None, :], p.n, d)
        pd = _pdet(mu, p)
        if g.delta is not None:
            mu = mu + g.delta
            pd = g.pdet
        pd = np.clip(pd, 0.01, 0.995)
        g.mu = mu
        g.sig = g.sig_c if g.sig_c is not None else np.full(g.cx.size, p.sigma_db)
        g.gain = np.log(pd) - np.log1p(-pd)
        g.base = np.log1p(-pd).sum(axis=1)
        g.pos = {int(c): j for j, c in enumerate(g.cols)}

    # -- positioning
    def _post(self, g: _Floor, ll: np.ndarray, k: np.ndarray):
        """Posterior mean and acc per row of ``ll`` (S, C)."""
        p = self.params
        ll = p.temperature * (ll - ll.max(axis=1, keepdims=True))
        w = np.exp(ll)
        w /= w.sum(axis=1, keepdims=True)
        mx = w @ g.cx
        my = w @ g.cy
        d = np.hypot(g.cx[None, :] - mx[:, None], g.cy[None, :] - my[:, None])
        order = np.argsort(d, axis=1)
        cw = np.cumsum(np.take_along_axis(w, order, axis=1), axis=1)
        j = np.minimum((cw < NOMINAL).sum(axis=1), d.shape[1] - 1)
        r = np.take_along_axis(d, order, axis=1)[np.arange(d.shape[0]), j] + 0.5 * p.cell
        acc = np.maximum(r * np.asarray(p.acc_scale)[heard_class(k)], p.min_acc)
        return mx, my, acc

    def _ll_dense(self, g: _Floor, R: np.ndarray) -> np.ndarray:
        """Log-likelihood (S, C) of scans ``R`` (S, Bf; NaN = not heard)."""
        p = self.params
        H = ~np.isnan(R)
        Rz = np.where(H, R, 0.0)
        out = np.empty((R.shape[0], g.cx.size))
        step = max(1, _CHUNK // max(g.cx.size * max(g.cols.size, 1), 1))
        a = -(p.nu + 1.0) / 2.0
        lsig = np.log(g.sig)
        for s in range(0, R.shape[0], step):
            h = H[s:s + step]
            z = (Rz[s:s + step, None, :] - g.mu[None, :, :]) / g.sig[None, :, None]
            t = a * np.log1p(z * z / p.nu) - lsig[None, :, None] + g.gain[None, :, :]
            out[s:s + step] = g.base[None, :] + np.einsum("scb,sb->sc", t, h.astype(float))
        return out

    def locate_rows(self, fl: int, R: np.ndarray):
        """Fixes of scans on floor ``fl``: ``R`` (S, beacons of the floor, in
        model order; NaN = not heard).  Returns ``x, y, acc, heard`` arrays;
        rows that heard nothing get NaN."""
        g = self.floors[fl]
        R = np.asarray(R, dtype=float).reshape(-1, g.cols.size)
        k = (~np.isnan(R)).sum(axis=1)
        x, y, acc = np.full(k.size, np.nan), np.full(k.size, np.nan), np.full(k.size, np.nan)
        ok = np.flatnonzero(k > 0)
        if ok.size:
            x[ok], y[ok], acc[ok] = self._post(g, self._ll_dense(g, R[ok]), k[ok])
        return x, y, acc, k

    def locate(self, readings: Iterable[tuple[str, float]]):
        """``((x, y, floor, acc) or None, unknown readings, distinct beacons used)``
        for one scan: the floor is the strongest beacon's; beacons of other
        floors are ignored."""
        best, unknown = distinct_readings(readings, self.index)
        if not best:
            return None, unknown, 0
        top = max(best.items(), key=lambda kv: (kv[1], kv[0]))[0]
        fl = int(self.floor[self.index[top]])
        g = self.floors[fl]
        cols, rs = [], []
        pos = g.pos
        for bid, r in best.items():
            j = pos.get(self.index[bid])
            if j is not None:
                cols.append(j)
                rs.append(r)
        cols_a = np.asarray(cols)
        p = self.params
        z = (np.asarray(rs)[None, :] - g.mu[:, cols_a]) / g.sig[:, None]
        ll = (g.base + g.gain[:, cols_a].sum(axis=1) - (p.nu + 1.0) / 2.0 * np.log1p(z * z / p.nu).sum(axis=1)
              - len(cols) * np.log(g.sig))
        # one scan: the same arithmetic as _post on 1-D arrays, sorting only the cells that
        # hold any weight (~4x cheaper than the batch path for one row)
        w = np.exp(p.temperature * (ll - ll.max()))
        keep = np.flatnonzero(w > 1e-9)
        w = w[keep]
        w /= w.sum()
        cx, cy = g.cx[keep], g.cy[keep]
        mx, my = float(w @ cx), float(w @ cy)
        d = np.hypot(cx - mx, cy - my)
        o = np.argsort(d)
        j = min(int(np.searchsorted(np.cumsum(w[o]), NOMINAL)), o.size - 1)
        r = float(d[o[j]]) + 0.5 * p.cell
        acc = max(r * p.acc_scale[min(len(cols), 3) - 1], p.min_acc)
        return (mx, my, fl, acc), unknown, len(cols)

    # -- persistence
    def to_dict(self) -> dict:
        """JSON-ready (``ble-model.json``)."""
        survey = {}
        for fl, g in self.floors.items():
            if g.delta is not None:
                survey[str(fl)] = {"x0": g.x0, "y0": g.y0, "nx": g.nx, "ny": g.ny,
                                   "delta": np.round(g.delta, 1).ravel().tolist(),
                                   "pdet": np.round(g.pdet, 3).ravel().tolist(),
                                   "sigma": np.round(g.sig_c, 2).ravel().tolist()}
        prm = asdict(self.params)
        prm["acc_scale"] = list(self.params.acc_scale)
        return {"kind": "edge-agent ble-model", "version": MODEL_VERSION, "params": prm,
                "beacons": [{"id": b, "x": float(x), "y": float(y), "floor": int(f), "tx": round(float(t), 2)}
                            for b, x, y, f, t in zip(self.ids, self.bx, self.by, self.floor, self.tx)],
                "grids": {str(fl): [g.x0, g.y0, g.x0 + g.nx * self.params.cell, g.y0 + g.ny * self.params.cell]
                          for fl, g in self.floors.items()},
                "survey": survey, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BleModel":
        """Inverse of :meth:`to_dict`; ``ValueError`` naming what is wrong."""
        if not isinstance(d, Mapping) or d.get("kind") != "edge-agent ble-model":
            raise ValueError("not an edge-agent BLE model (no \"kind\": \"edge-agent ble-model\")")
        if d.get("version") != MODEL_VERSION:
            raise ValueError(f"BLE model version {d.get('version')!r} is not supported (expected {MODEL_VERSION})")
        try:
            prm = dict(d["params"])
            prm["acc_scale"] = tuple(prm["acc_scale"])
            params = RadioParams(**prm)
            bs = d["beacons"]
            survey = {int(k): v for k, v in d.get("survey", {}).items()}
            bounds = {int(k): tuple(float(x) for x in v) for k, v in d.get("grids", {}).items()}
            return cls([b["id"] for b in bs], [b["x"] for b in bs], [b["y"] for b in bs], [b["floor"] for b in bs],
                       [b["tx"] for b in bs], params, bounds=bounds, survey=survey, meta=d.get("meta", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed BLE model: {e}") from None


def store_model(beacons: Sequence[Any], ble: Mapping[str, Any], outline_bounds=None,
                fitted: Mapping[str, Any] | None = None) -> BleModel | None:
    """A store's BLE radio: its ``fitted`` model (``survey fit``) when it has
    one, else the no-survey defaults over its layout ``beacons`` with the
    ``[sources.ble]`` table's ``path_loss_exponent``, ``rssi_sigma_db`` and
    ``min_acc``; the grid spans ``outline_bounds`` (x0, y0, x1, y1) + 1 m when
    given.  None without beacons."""
    if fitted is not None:
        return BleModel.from_dict(fitted)
    if not beacons:
        return None
    params = RadioParams(n=ble.get("path_loss_exponent", 2.0), sigma_db=ble.get("rssi_sigma_db", 6.0),
                         min_acc=ble.get("min_acc", 1.5))
    bounds = None
    if outline_bounds is not None:
        x0, y0, x1, y1 = outline_bounds
        bounds = {int(b.floor): (x0 - 1.0, y0 - 1.0, x1 + 1.0, y1 + 1.0) for b in beacons}
    return BleModel.from_beacons(beacons, params, bounds)


# ---------------------------------------------------------------- fitting
def _fit_pathloss(bx, by, tx0, X, Y, R, n_default: float):
    """Per-beacon tx and a shared n by least squares on heard readings."""
    B = bx.size
    H = ~np.isnan(R)
    s, b = np.nonzero(H)
    L = -10.0 * np.log10(np.maximum(np.hypot(X[s] - bx[b], Y[s] - by[b]), 0.5))
    r = R[s, b]
    if s.size < 10:
        return tx0.copy(), n_default
    A = np.zeros((s.size, B + 1))
    A[np.arange(s.size), b] = 1.0
    A[:, B] = L
    counts = np.bincount(b, minlength=B)
    keep = counts >= 5
    # beacons with too few readings: shrink towards the others' offset
    sol, *_ = np.linalg.lstsq(A[:, np.r_[keep, True]], r, rcond=None)
    n = float(sol[-1])
    if not 1.2 <= n <= 5.0:
        n = float(np.clip(n, 1.2, 5.0))
    tx = tx0.copy()
    off = []
    for j in range(B):
        m = b == j
        if counts[j] >= 5:
            tx[j] = float(np.mean(r[m] - n * L[m]))
            off.append(tx[j] - tx0[j])
    med = float(np.median(off)) if off else 0.0
    for j in range(B):
        if counts[j] < 5:
            tx[j] = tx0[j] + med
    return tx, n


def _fit_detection(mu: np.ndarray, H: np.ndarray, p: RadioParams) -> RadioParams:
    """Sensitivity, width and miss rate by maximum likelihood on a grid."""
    mu = mu.ravel()
    h = H.ravel().astype(float)
    best = None
    for w in (2.0, 3.0, 5.0, 8.0, 12.0):
        for sens in np.arange(-110.0, -49.0, 2.0):
            q = _ndtr((mu - sens) / w)
            for pm in (0.01, 0.03, 0.1, 0.2, 0.35):
                pd = np.clip((1 - pm) * q, 1e-4, 1 - 1e-4)
                ll = float(np.sum(h * np.log(pd) + (1 - h) * np.log1p(-pd)))
                if best is None or ll > best[0]:
                    best = (ll, sens, w, pm)
    return replace(p, sens_dbm=float(best[1]), sens_width_db=float(best[2]), p_miss=float(best[3]))


def _fit_once(ids, bx, by, fl, tx0, X, Y, F, R, p: RadioParams, bounds, survey: bool = True) -> BleModel:
    """Fit on labelled scans (no calibration of temperature/acc_scale)."""
    tx, n = _fit_pathloss(bx, by, tx0, X, Y, R, p.n)
    d = np.hypot(X[:, None] - bx[None, :], Y[:, None] - by[None, :])
    same = F[:, None] == fl[None, :]
    mu = _pathloss(tx[None, :], n, d)
    H = ~np.isnan(R)
    res = np.where(H, R - mu, np.nan)
    sig = float(1.4826 * np.nanmedian(np.abs(res - np.nanmedian(res)))) if H.any() else p.sigma_db
    p = replace(p, n=n, sigma_db=max(sig, 1.0))
    p = _fit_detection(mu[same], H[same], p)
    if not survey:
        return BleModel(ids, bx, by, fl, tx, p, bounds)
    tmp = BleModel(ids, bx, by, fl, tx, p, bounds)
    sv = {}
    for f, g in tmp.floors.items():
        rows = np.flatnonzero(F == f)
        if rows.size == 0:
            continue
        cols = g.cols
        W = np.exp(-((X[rows, None] - g.cx[None, :]) ** 2 + (Y[rows, None] - g.cy[None, :]) ** 2)
                   / (2.0 * p.kernel_m ** 2))  # (S, C)
        Hf = H[np.ix_(rows, cols)].astype(float)
        E = np.nan_to_num(res[np.ix_(rows, cols)])
        k0 = p.k0
        delta = (W.T @ (Hf * E)) / (W.T @ Hf + k0)
        wc = W.sum(axis=0)[:, None]
        pd_pl = np.clip(_pdet(g.mu, p), 0.01, 0.995)
        pdet = (W.T @ Hf + k0 * pd_pl) / (wc + k0)
        # residual spread left after the fingerprint, at each scan's own cell
        ci = np.clip(((X[rows] - g.x0) // p.cell).astype(int), 0, g.nx - 1) + g.nx * np.clip(
            ((Y[rows] - g.y0) // p.cell).astype(int), 0, g.ny - 1)
        e2 = np.where(Hf > 0, E - delta[ci], np.nan)
        sfp = float(1.4826 * np.nanmedian(np.abs(e2))) if np.isfinite(e2).any() else p.sigma_db
        sfp = max(sfp, 1.0)
        sig_c = (wc[:, 0] * sfp + k0 * p.sigma_db) / (wc[:, 0] + k0)
        sv[f] = {"x0": g.x0, "y0": g.y0, "nx": g.nx, "ny": g.ny, "delta": delta, "pdet": pdet, "sigma": sig_c}
    return BleModel(ids, bx, by, fl, tx, p, bounds, survey=sv)


def _rows_by_floor(model: BleModel, F, R):
    """Split (S, all beacons) scans into floors: the strongest beacon's."""
    top = np.where(np.isnan(R), -np.inf, R)
    j = np.argmax(top, axis=1)
    heard_any = np.isfinite(top.max(axis=1))
    sf = np.where(heard_any, model.floor[j], np.asarray(F))
    return sf


def predict(model: BleModel, F, R):
    """Fixes of scans ``R`` (S, model beacons; NaN = not heard): ``x, y, floor,
    acc, heard`` (NaN where nothing was heard)."""
    R = np.asarray(R, dtype=float)
    S = R.shape[0]
    x, y, acc = np.full(S, np.nan), np.full(S, np.nan), np.full(S, np.nan)
    k = np.zeros(S, dtype=np.int64)
    sf = _rows_by_floor(model, F, R)
    for f, g in model.floors.items():
        rows = np.flatnonzero(sf == f)
        if rows.size:
            x[rows], y[rows], acc[rows], k[rows] = model.locate_rows(f, R[np.ix_(rows, g.cols)])
    return x, y, sf, acc, k


def _folds(walks: np.ndarray, ts: np.ndarray) -> list[np.ndarray]:
    u = list(dict.fromkeys(walks.tolist()))
    if len(u) >= 2:
        return [walks == w for w in u]
    order = np.argsort(ts, kind="stable")
    out = []
    for part in np.array_split(order, 3):
        m = np.zeros(walks.size, dtype=bool)
        m[part] = True
        out.append(m)
    return out


TEMPERATURES = (1.0, 0.6, 0.35, 0.2, 0.12)


def fit(ids, bx, by, floor, tx0, X, Y, F, R, walks, ts=None, *, params: RadioParams = RadioParams(),
        bounds=None, survey: bool = True, meta: Mapping[str, Any] | None = None):
    """Fit a store's radio from labelled scans and calibrate its accuracy.

    ``ids``, ``bx``, ``by``, ``floor``, ``tx0``: the layout's beacons
    (``tx0`` = layout ``tx_power``); ``X``, ``Y``, ``F``: true position and
    floor per scan; ``R``: (scans, beacons) RSSI, NaN = not heard; ``walks``:
    the walk of each scan (the unit held out).  ``survey=False`` fits only
    the path-loss curve and detection (no per-cell fingerprint).

    The temperature (by median error) and ``acc_scale`` per beacons-heard
    class (the 86.5 % quantile of error / raw acc) come from a
    leave-one-walk-out pass over the scans (three time blocks with one walk).
    A class with fewer than 20 held-out scans is too small to place that
    quantile: it gets the worst ratio among them, never less than the pooled
    scale (with 3-19 scans; the pooled scale below 3).  Such scans (a phone
    that hears one beacon where the survey heard five) are rare because they
    are odd, and the pooled scale, set by the common ones, claimed a third of
    their error on real scans (BENCHMARKS.md, "Real radio").
    Returns ``(model, cv)`` where ``cv`` holds the held-out fixes (``x, y,
    acc, heard``) for the report, each fold's with the temperature and
    accuracy calibrated on the other folds only.
    """
    X, Y = np.asarray(X, float), np.asarray(Y, float)
    F = np.asarray(F, dtype=np.int64)
    R = np.asarray(R, float)
    bx, by, tx0 = np.asarray(bx, float), np.asarray(by, float), np.asarray(tx0, float)
    fl = np.asarray(floor, dtype=np.int64)
    walks = np.asarray(walks)
    ts = np.arange(X.size, dtype=float) if ts is None else np.asarray(ts, float)
    folds = _folds(walks, ts)
    S = X.size
    raw = {t: (np.full(S, np.nan), np.full(S, np.nan), np.full(S, np.nan)) for t in TEMPERATURES}
    k = np.zeros(S, dtype=np.int64)
    base = replace(params, acc_scale=(1.0, 1.0, 1.0))
    for m in folds:
        tr = ~m
        if tr.sum() < 5:
            continue
        mdl = _fit_once(ids, bx, by, fl, tx0, X[tr], Y[tr], F[tr], R[tr], base, bounds, survey)
        for t in TEMPERATURES:
            mt = _with(mdl, replace(mdl.params, temperature=t))
            x, y, _, acc, kk = predict(mt, F[m], R[m])
            raw[t][0][m], raw[t][1][m], raw[t][2][m] = x, y, acc
            k[m] = kk
    ok = k > 0
    cls = heard_class(k)
    errs = {t: np.hypot(raw[t][0] - X, raw[t][1] - Y) for t in TEMPERATURES}

    def calibrate(sel: np.ndarray) -> tuple[float, list[float]]:
        """Temperature and acc_scale from the held-out fixes of the scans in ``sel``."""
        use = ok & sel
        best_t, best_e = params.temperature, math.inf
        for t in TEMPERATURES:
            if use.any() and np.nanmedian(errs[t][use]) < best_e - 1e-9:
                best_t, best_e = t, float(np.nanmedian(errs[t][use]))
        err, acc = errs[best_t], raw[best_t][2]
        scale = list(params.acc_scale)
        pooled = float(np.quantile(err[use] / acc[use], NOMINAL)) if use.sum() >= 10 else 1.0
        for c in range(3):
            mm = use & (cls == c)
            r = err[mm] / acc[mm]
            if r.size >= 20:
                scale[c] = float(np.quantile(r, NOMINAL))
            else:  # too few held-out scans to place the quantile: the worst of them, never under the pooled
                scale[c] = max(pooled, float(r.max())) if r.size >= 3 else pooled
        return best_t, scale

    best_t, scale = calibrate(np.ones(S, dtype=bool))
    final = replace(params, temperature=best_t, acc_scale=tuple(round(s, 3) for s in scale))
    model = _fit_once(ids, bx, by, fl, tx0, X, Y, F, R, final, bounds, survey)
    model = _with(model, replace(model.params, temperature=best_t, acc_scale=final.acc_scale))
    model.meta.update(meta or {})
    # The report's fixes: each fold's from a model fitted without it (above), with the
    # temperature and acc_scale calibrated without it too, so the coverage it shows for a
    # walk is what a walk the fit never saw would get (not the calibration target itself).
    x, y, acc = np.full(S, np.nan), np.full(S, np.nan), np.full(S, np.nan)
    for m in folds:
        t, sc = calibrate(~m) if (ok & ~m).any() else (best_t, list(final.acc_scale))
        x[m], y[m] = raw[t][0][m], raw[t][1][m]
        acc[m] = raw[t][2][m] * np.asarray(sc)[cls[m]]
    cv = {"x": x, "y": y, "acc": np.where(ok, np.maximum(acc, params.min_acc), np.nan), "heard": k,
          "temperature": best_t}
    return model, cv


def _with(model: BleModel, params: RadioParams) -> BleModel:
    """The same model with other temperature / acc_scale (arrays shared)."""
    new = object.__new__(BleModel)
    new.ids, new.index, new.bx, new.by, new.floor, new.tx = (model.ids, model.index, model.bx, model.by,
                                                            model.floor, model.tx)
    new.params, new.meta, new.floors = params, dict(model.meta), model.floors
    return new

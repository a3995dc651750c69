"""Fusing successive coarse fixes of a device into one position estimate.

Wi-Fi location engines (5–10 m) and phones' own fixes (5–40 m) almost never
put a whole accuracy disc inside a section, so judged one fix at a time they
place nobody anywhere.  A shopper who stands in a section for half a minute
sends 15 of them; averaged, they place her within a metre or two.  This
module does the averaging, per device, vectorised over a batch
(:func:`fuse`), or fix by fix in plain Python for the few fixes of a batch
at low load (:func:`fuse_small`, the same answers).

The model (chosen by measurement: BENCHMARKS.md, "Fused tracker")
------------------------------------------------------------------

An *interacting multiple model* (IMM) filter of two near-constant-position
Kalman filters per device, isotropic (one variance per model serves both
axes, since fixes are isotropic):

* **still** — browsing: process noise ``q_still`` m²/s (a slow drift);
* **moving** — walking: process noise ``q_move`` m²/s (~1 m/s);

with a two-state Markov chain between them (mean ``to_move_s`` seconds
still before walking, ``to_still_s`` walking before stopping).  While a
shopper walks, the moving filter follows her without lag; once she stops,
the still filter's likelihood wins within a few fixes and it averages every
fix since.  The output is the mixture's mean and spread (the spread between
the two filters counts: when they disagree the estimate is uncertain).
A plain constant-position Kalman filter with one process noise cannot do
both: tuned for walking it stays at ~1 m σ for BLE at 1 Hz and ~2 m for Wi-Fi
and never fits an aisle; tuned for standing it trails a walking shopper by
tens of metres and takes half a minute to catch up when she stops.

Noise of a fix.  ``acc`` is read as a **2σ radius**: σ per axis =
``acc / acc_sigmas`` (``acc_sigmas = 2``).  The project's own figures use
it (Wi-Fi σ 3.5 m reported as ``acc`` 8, BLE σ 1.5 m as 3, the simulator's
HTML5 σ = acc/2); iOS and Android report a ~68 % radius (≈ 1.5σ), for which
``acc_sigmas = 1.5`` is right.  A source that reports a variance (Meraki's
``variance``) can pass ``acc = acc_sigmas * sqrt(variance)``.

Time.  Fixes are applied in their own time order: a batch is sorted by
``(device, ts)`` and applied in rounds (round ``r`` takes every device's
``r``-th fix, vectorised).  A fix older than the device's last one (late
over MQTT, or a Meraki batch re-sent) still counts — as a measurement of
*now* with its noise widened by the motion since (``R + q·(t_last − ts)``
per model); it never moves the estimate's time backwards.  A gap longer
than ``max_gap_s`` (by default 60 s: walking ~1 m/s for a minute, the prior
is worth nothing), or a fix on another floor, restarts the estimate from the
fix.  A fix that even the moving filter finds impossible (normalised
innovation above ``gate``, e.g. an HTML5 fix 200 m off with a confident
``acc``) is ignored; two such in a row restart the estimate at the second.

Deciding fences: the seam with :class:`geometry.fences.FenceIndex`
-------------------------------------------------------------------

The estimate is Gaussian, ``N((x, y), σ² I)``.  Near an edge of a fence,
``P(inside) ≈ Φ(d / σ)`` where ``d`` is the centre's signed distance to the
edge (exact for a half-plane, and what matters for a fence larger than a
few σ).  So

    P(inside) ≥ confidence   ⇔   d ≥ z σ,   z = Φ⁻¹(confidence)   (1.2816 at 0.9)

which is exactly "a disc of radius ``z σ`` lies wholly inside", and
``P(inside) ≤ 1 − confidence`` is exactly "that disc lies wholly outside".
(The pipeline now computes the mass itself, per fence the disc reaches:
:class:`geometry.zoneprob.ZoneProb`, from ``Fused.sigma``.  The disc is what
finds the candidates; in a narrow fence or a corner the true mass is lower
than the nearest edge says, and the device is neither entered there on a
disc that merely fits nor held once it walked half-way out.)
:func:`fuse` therefore returns, per fix, an *effective fix*
``(ex, ey, eacc = z σ)`` that the existing ``FenceIndex.classify`` and
``tracking.step`` judge as they judge any fix today: enter when the disc is
inside, exit when it is outside, nothing while it straddles (the
hysteresis band ``1 − c < P < c``).  For fences narrower than ~3σ, or near a
corner, ``Φ(d/σ)`` is optimistic (by up to ~0.1 at 0.9).

Walkable space.  A shopper never stands on a shelf.  Classify the effective
fixes against :func:`evidence_fences` — each fence grown over the obstacles
next to it, every obstacle point to its nearest fence
(:func:`geometry.space.evidence_shapes`) — instead of the raw fences: an
estimate whose disc spills onto the shelf beside aisle 3 is then still
"in aisle 3" (the shelf holds no probability: ``P(aisle 3 | walkable)``),
and never in aisle 4 behind the shelf.

Weak fixes.  A BLE scan that hears one or two beacons is a proximity
whose error repeats from scan to scan; passed with ``weak``, such a fix
moves the estimate but leaves each filter's variance at least
``(weak_floor · σ_fix)²``, so a proximity repeated near an edge never adds
up to an entry.

Correlated fixes.  A BLE fix from three or more beacons is a fingerprint of
where the phone is, and its error repeats for as long as the phone stays in
the same multipath: on the labelled real scans of issue 21 the filter's 2σ
disc, fusing such fixes as if independent, held the truth on 24-46 % of
scans where 86 % is nominal.  The pipeline passes them as ``correlated``:
such a fix leaves each filter's variance at least ``(corr_floor · σ_fix)²``,
so one fingerprint heard again and again never adds up to more than a
fraction of itself.  ``corr_floor`` (0.7) was chosen on one public data set
and checked on another (BENCHMARKS.md "Real radio").

The precise path is untouched.  A fix whose ``acc <= precise_acc`` (UWB, a
check-in), or whose own disc is no larger than the fused one, is returned
*as it came* (``ex, ey, eacc = x, y, acc``): whatever entered at once
before still enters at once, on the same fix.  It also updates the filter.

Integration (what the pipeline does per batch)
----------------------------------------------

::

    state = FusionState()                                   # once per agent
    fidx = FenceIndex(evidence_fences(cfg_fences, obstacles_by_floor))  # per config
    ...
    rows = state.rows(devices)                              # one int per fix
    f = fuse(state, rows, xs, ys, floors, accs, ts, params)  # arrays, input order
    matches = fidx.classify(f.x, f.y, floors, f.acc)
    for j: step(track, matches[j], now, track_params, acc=f.acc[j])
    state.forget(device)                                    # on timeout / erase

``ts`` must be the clock the tracker uses (the fix's own time with the ping
clock).  Run ``step`` with ``sustained_pings = 0`` on fused fixes: the
estimate already *is* the sustained evidence, and counting consecutive
centre-inside estimates (which are correlated) would enter below the
configured confidence (measured: HTML5 passers-by 3 m off entered 8 in 60
with it, 1 in 60 without).  Per device the state is 10 numbers (~70 bytes in flat arrays),
plus the ``rows`` dict entry.

Pure: no I/O, no clock; numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from .space import evidence_shapes

__all__ = ["EvidenceFence", "Fused", "FusionParams", "FusionState", "evidence_fences", "fuse", "fuse_small", "z_for"]


@lru_cache(maxsize=16)
def z_for(confidence: float) -> float:
    """Disc radius in σ for a confidence: ``Φ⁻¹(confidence)`` (1.2816 at 0.9)."""
    if not 0.5 < confidence < 1.0:
        raise ValueError("confidence must be in (0.5, 1)")
    return NormalDist().inv_cdf(confidence)


@dataclass(frozen=True, slots=True, kw_only=True)
class FusionParams:
    """Parameters of :func:`fuse` (see the module docstring).

    Units: metres, seconds; ``q_*`` in m²/s (a random walk's variance growth).
    """

    confidence: float = 0.9
    acc_sigmas: float = 2.0
    # q_still, q_move, weak_floor and corr_floor were tuned on real scans (benchmarks/_zones.py on the
    # labelled BLE data sets of issue 21, BENCHMARKS.md section 11); the
    # simulator's scenarios (tests/fusion_scenarios.py) only checked that nothing broke.
    q_still: float = 0.1
    q_move: float = 1.0
    to_move_s: float = 60.0
    to_still_s: float = 10.0
    max_gap_s: float = 60.0
    precise_acc: float = 1.0
    gate: float = 25.0  # normalised innovation squared (2 dof) beyond which a fix is an outlier
    weak_floor: float = 0.85  # a weak fix leaves each filter's sigma >= weak_floor * its own sigma
    corr_floor: float = 0.7  # a correlated fix leaves each filter's sigma >= corr_floor * its own sigma

    def __post_init__(self):
        z_for(self.confidence)
        for k in ("acc_sigmas", "q_still", "q_move", "to_move_s", "to_still_s", "max_gap_s", "gate"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be positive")
        if not 0 <= self.weak_floor <= 1:
            raise ValueError("weak_floor must be between 0 and 1")
        if not 0 <= self.corr_floor <= 1:
            raise ValueError("corr_floor must be between 0 and 1")
        if self.q_still > self.q_move:
            raise ValueError("q_still must not exceed q_move")


_VAGUE = 1e12  # m², the variance of "no idea"
_COLS = ("t", "mu", "xs", "ys", "ps", "xm", "ym", "pm")  # float64 columns


class FusionState:
    """Per-device filter state as flat numpy arrays, one row per device.

    Columns: ``t`` (time of the estimate; NaN = no estimate), ``mu``
    (probability of the moving model), ``xs, ys, ps`` (still filter: mean,
    variance per axis), ``xm, ym, pm`` (moving filter), ``floor`` (int32),
    ``miss`` (consecutive outliers, int8): 66 bytes a device.

    :meth:`rows` maps device keys to rows (allocating), :meth:`forget` frees
    one.  A pipeline that keeps its own key → row map may use :meth:`alloc`
    and :meth:`free` instead.
    """

    __slots__ = _COLS + ("floor", "miss", "_rows", "_free", "_n")

    def __init__(self, capacity: int = 1024):
        capacity = max(int(capacity), 1)
        for c in _COLS:
            setattr(self, c, np.full(capacity, np.nan) if c == "t" else np.zeros(capacity))
        self.floor = np.zeros(capacity, dtype=np.int32)
        self.miss = np.zeros(capacity, dtype=np.int8)
        self._rows: dict = {}
        self._free: list[int] = []
        self._n = 0  # rows ever handed out

    @property
    def capacity(self) -> int:
        return self.t.size

    def __len__(self) -> int:
        return self._n - len(self._free)

    def nbytes_per_device(self) -> int:
        """Bytes of array state per device row."""
        return sum(getattr(self, c).itemsize for c in _COLS + ("floor", "miss"))

    def _grow(self, need: int) -> None:
        cap = self.capacity
        if need <= cap:
            return
        new = max(need, cap * 2)
        for c in _COLS + ("floor", "miss"):
            old = getattr(self, c)
            arr = np.full(new, np.nan) if c == "t" else np.zeros(new, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, c, arr)

    def alloc(self) -> int:
        """A fresh row (no estimate yet)."""
        if self._free:
            r = self._free.pop()
        else:
            r = self._n
            self._n += 1
            self._grow(self._n)
        self.t[r] = np.nan
        return r

    def free(self, row: int) -> None:
        """Forget the estimate in ``row`` and make the row reusable."""
        self.t[row] = np.nan
        self._free.append(int(row))

    def rows(self, keys: Iterable[Hashable]) -> np.ndarray:
        """Row per key (allocated on first sight), as an int64 array."""
        row = self.row
        return np.asarray([row(k) for k in keys], dtype=np.int64)

    def row(self, key: Hashable) -> int:
        """The row of one key (allocated on first sight), as a Python int."""
        r = self._rows.get(key)
        if r is None:
            r = self._rows[key] = self.alloc()
        return r

    def forget(self, key: Hashable) -> None:
        """Drop a device (timeout, erasure); no-op when unknown."""
        r = self._rows.pop(key, None)
        if r is not None:
            self.free(r)

    def reset(self, rows) -> None:
        """Restart the estimate of ``rows`` from their next fix."""
        self.t[np.asarray(rows, dtype=np.int64)] = np.nan


class Fused(NamedTuple):
    """Per fix, in input order: the effective fix to classify (``x``, ``y``,
    ``acc`` = disc radius, metres), the estimate's ``sigma`` (per axis,
    metres; for a passed-through fix, ``acc / acc_sigmas``) and whether the
    fix was ``passed`` through as it came."""

    x: np.ndarray
    y: np.ndarray
    acc: np.ndarray
    sigma: np.ndarray
    passed: np.ndarray


def fuse(state: FusionState, rows, x, y, floor, acc, ts, params: FusionParams = FusionParams(), *,
         weak=None, correlated=None) -> Fused:
    """Fold a batch of fixes into the per-device estimates and return the
    effective fix of each (see the module docstring).

    ``rows``: the device row of each fix (:meth:`FusionState.rows`);
    ``x``, ``y`` local metres; ``floor`` int; ``acc`` metres (NaN/inf: no
    position information — passed through, state untouched); ``ts``
    seconds.  Equal-length arrays; a device may appear several times, in any
    time order.  ``weak`` (optional, bool per fix): fixes whose error
    persists from one fix to the next (a BLE scan that hears one or two
    beacons says "near beacon B" every time, wherever near B the phone is);
    they move the estimate like any fix but never leave either filter's
    variance below ``(weak_floor * acc / acc_sigmas)²``, so that repeating
    the same proximity never makes it more precise than one of them.
    ``correlated`` (optional, bool per fix): fixes whose errors are
    correlated from one to the next (a BLE fingerprint of three or more
    beacons); the same with ``corr_floor`` (``weak`` wins where both are set;
    a precise fix, ``acc <= precise_acc``, is never floored as correlated).
    """
    rows = np.asarray(rows, dtype=np.int64).ravel()
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    fl = np.asarray(floor).ravel().astype(np.int32, copy=False)
    acc = np.asarray(acc, dtype=float).ravel()
    ts = np.asarray(ts, dtype=float).ravel()
    n = rows.size
    if not (x.size == y.size == fl.size == acc.size == ts.size == n):
        raise ValueError("rows, x, y, floor, acc and ts must have equal lengths")
    ex, ey, eacc = x.copy(), y.copy(), acc.copy()
    sigma = acc / params.acc_sigmas
    passed = np.ones(n, dtype=bool)
    if n == 0:
        return Fused(ex, ey, eacc, sigma, passed)
    wk = np.zeros(n, dtype=bool) if weak is None else np.asarray(weak, dtype=bool).ravel()
    if wk.size != n:
        raise ValueError("weak must have one flag per fix")
    cr = None
    if correlated is not None:
        cr = np.asarray(correlated, dtype=bool).ravel()
        if cr.size != n:
            raise ValueError("correlated must have one flag per fix")
        cr = cr & (acc > params.precise_acc)
    wf2, cf2 = params.weak_floor * params.weak_floor, params.corr_floor * params.corr_floor
    usable = np.isfinite(x) & np.isfinite(y) & np.isfinite(acc) & np.isfinite(ts)
    if n == 1:  # a batch of one (low load): plain floats, ~15x fewer numpy calls
        if usable[0]:
            f2 = wf2 if wk[0] else cf2 if cr is not None and cr[0] else 0.0
            o = _one(state, int(rows[0]), float(x[0]), float(y[0]), int(fl[0]), max(float(acc[0]), 0.0),
                     float(ts[0]), params, f2)
            if o is not None:
                ex[0], ey[0], eacc[0], sigma[0] = o
                passed[0] = False
        return Fused(ex, ey, eacc, sigma, passed)
    idx = np.flatnonzero(usable)
    order = idx[np.lexsort((ts[idx], rows[idx]))]
    r_sorted = rows[order]
    start = np.r_[True, r_sorted[1:] != r_sorted[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(order.size), 0))
    rank = np.arange(order.size) - first
    a = np.maximum(acc, 0.0)
    f2 = wk * wf2 if cr is None else np.where(wk, wf2, np.where(cr, cf2, 0.0))  # variance floors, per fix
    for k in range(int(rank.max()) + 1 if order.size else 0):
        sel = order[rank == k]
        _round(state, rows[sel], x[sel], y[sel], fl[sel], a[sel], ts[sel], params, ex, ey, eacc, sigma, passed, sel,
               f2[sel])
    return Fused(ex, ey, eacc, sigma, passed)


def fuse_small(state: FusionState, rows: Sequence[int], x: Sequence[float], y: Sequence[float],
               floor: Sequence[int], acc: Sequence[float], ts: Sequence[float],
               params: FusionParams = FusionParams(), *, weak: Sequence[bool] | None = None,
               correlated: Sequence[bool] | None = None) -> list[tuple[float, float, float, float, bool]]:
    """:func:`fuse` fix by fix in plain Python, for the few fixes of a batch at
    low load, where numpy's fixed cost per call is most of :func:`fuse`'s time.

    Same arguments as :func:`fuse`, as sequences; returns per fix, in input
    order, ``(x, y, acc, sigma, passed)`` as :class:`Fused` holds them.  Each
    device's fixes are applied in time order, as :func:`fuse`'s rounds apply
    them (devices are independent), each by :func:`_one`: the same answers
    and the same state, up to the last bits of ``math.exp``/``math.log``
    against numpy's (tests/test_geometry_coarse_small.py).
    """
    n = len(rows)
    if not (len(x) == len(y) == len(floor) == len(acc) == len(ts) == n):
        raise ValueError("rows, x, y, floor, acc and ts must have equal lengths")
    if (weak is not None and len(weak) != n) or (correlated is not None and len(correlated) != n):
        raise ValueError("weak and correlated must have one flag per fix")
    p = params
    wf2, cf2 = p.weak_floor * p.weak_floor, p.corr_floor * p.corr_floor
    out = []
    todo = []  # (row, ts, i) of each usable fix: sorted, each device's fixes in time order
    for i in range(n):
        xi, yi, ai, ti = float(x[i]), float(y[i]), float(acc[i]), float(ts[i])
        out.append((xi, yi, ai, ai / p.acc_sigmas, True))  # passed through, unless fused below
        if math.isfinite(xi) and math.isfinite(yi) and math.isfinite(ai) and math.isfinite(ti):
            todo.append((int(rows[i]), ti, i))
    todo.sort()
    for r, ti, i in todo:
        xi, yi, ai = out[i][:3]
        f2 = wf2 if weak is not None and weak[i] else (
            cf2 if correlated is not None and correlated[i] and ai > p.precise_acc else 0.0)
        o = _one(state, r, xi, yi, int(floor[i]), max(ai, 0.0), ti, p, f2)
        if o is not None:
            out[i] = (*o, False)
    return out


def _round(st: FusionState, r, zx, zy, fl, acc, ts, p: FusionParams, ex, ey, eacc, sigma, passed, out,
           f2) -> None:
    """One vectorised IMM update; ``r`` holds distinct rows; ``f2`` the
    squared variance floor of each fix (in units of its own variance)."""
    sf = np.maximum(acc / p.acc_sigmas, 1e-3)
    R = sf * sf
    t0 = st.t[r]
    gap = ts - t0
    fresh = ~(np.abs(gap) <= p.max_gap_s) | (st.floor[r] != fl)  # NaN t0 -> fresh
    dt = np.where(fresh, 0.0, np.maximum(gap, 0.0))
    late = np.where(fresh, 0.0, np.maximum(-gap, 0.0))

    mu = np.where(fresh, 0.5, st.mu[r])
    # a fresh estimate: the fix itself (a vague prior there makes the update give mean z, variance R)
    xs, ys, ps = (np.where(fresh, v, c[r]) for v, c in ((zx, st.xs), (zy, st.ys), (_VAGUE, st.ps)))
    xm, ym, pm = (np.where(fresh, v, c[r]) for v, c in ((zx, st.xm), (zy, st.ym), (_VAGUE, st.pm)))

    # mode transition over dt (two-state continuous-time Markov chain)
    a, b = 1.0 / p.to_move_s, 1.0 / p.to_still_s
    e = 1.0 - np.exp(-(a + b) * dt)
    p_sm, p_ms = a / (a + b) * e, b / (a + b) * e
    mus = 1.0 - mu
    cs = (1.0 - p_sm) * mus + p_ms * mu
    cm = p_sm * mus + (1.0 - p_ms) * mu
    cs_ = np.maximum(cs, 1e-300)
    cm_ = np.maximum(cm, 1e-300)
    # mixing: the initial condition of each filter
    wss = (1.0 - p_sm) * mus / cs_
    wsm = p_sm * mus / cm_
    x0s = wss * xs + (1 - wss) * xm
    y0s = wss * ys + (1 - wss) * ym
    x0m = wsm * xs + (1 - wsm) * xm
    y0m = wsm * ys + (1 - wsm) * ym
    d2 = (xs - xm) ** 2 + (ys - ym) ** 2  # spread between the filters (both axes)
    p0s = wss * ps + (1 - wss) * pm + wss * (1 - wss) * d2 / 2
    p0m = wsm * ps + (1 - wsm) * pm + wsm * (1 - wsm) * d2 / 2
    # predict
    p0s = p0s + p.q_still * dt
    p0m = p0m + p.q_move * dt
    # update (a late fix: measurement of now, widened by the motion since)
    Rs = R + p.q_still * late
    Rm = R + p.q_move * late
    Ss, Sm = p0s + Rs, p0m + Rm
    nxs, nys = zx - x0s, zy - y0s
    nxm, nym = zx - x0m, zy - y0m
    nis_s = (nxs * nxs + nys * nys) / Ss
    nis_m = (nxm * nxm + nym * nym) / Sm
    Ks, Km = p0s / Ss, p0m / Sm
    xs1, ys1, ps1 = x0s + Ks * nxs, y0s + Ks * nys, (1 - Ks) * p0s
    xm1, ym1, pm1 = x0m + Km * nxm, y0m + Km * nym, (1 - Km) * p0m
    if f2.any():  # a persistent error does not average out: keep the variance at its floor
        vf = f2 * R
        ps1, pm1 = np.maximum(ps1, vf), np.maximum(pm1, vf)
    # mode probabilities (log-likelihoods of 2-D isotropic Gaussians, 2π dropped)
    ls = -0.5 * nis_s - np.log(Ss) + np.log(cs_)
    lm = -0.5 * nis_m - np.log(Sm) + np.log(cm_)
    mu1 = 1.0 / (1.0 + np.exp(np.clip(ls - lm, -700, 700)))

    # outliers: even the moving filter says impossible.  A precise fix is
    # never one: the estimate restarts at it instead.
    precise = acc <= p.precise_acc
    bad = ~fresh & (nis_m > p.gate)
    out_l = bad & ~precise
    miss = np.where(out_l, st.miss[r] + 1, 0)
    restart = (out_l & (miss >= 2)) | (bad & precise)
    skip = out_l & ~restart
    cols = [mu1, xs1, ys1, ps1, xm1, ym1, pm1]
    if skip.any():  # a skipped fix leaves the filters as predicted (mixed, no update)
        cols = [np.where(skip, o, c) for o, c in zip((cm, x0s, y0s, p0s, x0m, y0m, p0m), cols)]
    if restart.any():
        cols = [np.where(restart, o, c) for o, c in zip((0.5, zx, zy, R, zx, zy, R), cols)]
    mu1, xs1, ys1, ps1, xm1, ym1, pm1 = cols
    miss = np.where(restart, 0, miss)

    st.mu[r], st.xs[r], st.ys[r], st.ps[r], st.xm[r], st.ym[r], st.pm[r] = mu1, xs1, ys1, ps1, xm1, ym1, pm1
    st.t[r] = np.where(fresh | restart, ts, np.maximum(t0, ts))
    st.floor[r] = fl
    st.miss[r] = miss.astype(np.int8)

    # the combined estimate
    w = 1.0 - mu1
    cx = w * xs1 + mu1 * xm1
    cy = w * ys1 + mu1 * ym1
    var = w * ps1 + mu1 * pm1 + w * mu1 * ((xs1 - xm1) ** 2 + (ys1 - ym1) ** 2) / 2
    sg = np.sqrt(var)
    z = z_for(p.confidence)
    ea = z * sg
    through = ~skip & (precise | (acc <= ea))
    fused = ~through
    o = out[fused]
    ex[o], ey[o], eacc[o], sigma[o] = cx[fused], cy[fused], ea[fused], sg[fused]
    passed[out] = through


def _one(st: FusionState, r: int, zx: float, zy: float, fl: int, acc: float, ts: float, p: FusionParams,
         f2: float = 0.0):
    """:func:`_round` for one fix with Python floats (the same arithmetic;
    tests check both agree).  Returns ``(x, y, acc, sigma)`` of the fused
    estimate, or None when the fix passes through as it came."""
    sf = max(acc / p.acc_sigmas, 1e-3)
    R = sf * sf
    t0 = float(st.t[r])
    gap = ts - t0
    fresh = not (abs(gap) <= p.max_gap_s) or int(st.floor[r]) != fl
    if fresh:
        dt = late = 0.0
        mu, xs, ys, ps, xm, ym, pm = 0.5, zx, zy, _VAGUE, zx, zy, _VAGUE
    else:
        dt, late = max(gap, 0.0), max(-gap, 0.0)
        mu, xs, ys, ps = float(st.mu[r]), float(st.xs[r]), float(st.ys[r]), float(st.ps[r])
        xm, ym, pm = float(st.xm[r]), float(st.ym[r]), float(st.pm[r])
    a, b = 1.0 / p.to_move_s, 1.0 / p.to_still_s
    e = 1.0 - math.exp(-(a + b) * dt)
    p_sm, p_ms = a / (a + b) * e, b / (a + b) * e
    mus = 1.0 - mu
    cs = (1.0 - p_sm) * mus + p_ms * mu
    cm = p_sm * mus + (1.0 - p_ms) * mu
    cs_, cm_ = max(cs, 1e-300), max(cm, 1e-300)
    wss = (1.0 - p_sm) * mus / cs_
    wsm = p_sm * mus / cm_
    x0s, y0s = wss * xs + (1 - wss) * xm, wss * ys + (1 - wss) * ym
    x0m, y0m = wsm * xs + (1 - wsm) * xm, wsm * ys + (1 - wsm) * ym
    d2 = (xs - xm) ** 2 + (ys - ym) ** 2
    p0s = wss * ps + (1 - wss) * pm + wss * (1 - wss) * d2 / 2 + p.q_still * dt
    p0m = wsm * ps + (1 - wsm) * pm + wsm * (1 - wsm) * d2 / 2 + p.q_move * dt
    Ss, Sm = p0s + R + p.q_still * late, p0m + R + p.q_move * late
    nxs, nys, nxm, nym = zx - x0s, zy - y0s, zx - x0m, zy - y0m
    nis_s = (nxs * nxs + nys * nys) / Ss
    nis_m = (nxm * nxm + nym * nym) / Sm
    Ks, Km = p0s / Ss, p0m / Sm
    d = min(max(-0.5 * nis_s - math.log(Ss) + math.log(cs_) - (-0.5 * nis_m - math.log(Sm) + math.log(cm_)),
                -700.0), 700.0)
    vf = f2 * R
    new = (1.0 / (1.0 + math.exp(d)), x0s + Ks * nxs, y0s + Ks * nys, max((1 - Ks) * p0s, vf),
           x0m + Km * nxm, y0m + Km * nym, max((1 - Km) * p0m, vf))
    precise = acc <= p.precise_acc
    bad = not fresh and nis_m > p.gate
    out_l = bad and not precise
    miss = int(st.miss[r]) + 1 if out_l else 0
    restart = (out_l and miss >= 2) or (bad and precise)
    skip = out_l and not restart
    if skip:
        new = (cm, x0s, y0s, p0s, x0m, y0m, p0m)
    if restart:
        new = (0.5, zx, zy, R, zx, zy, R)
        miss = 0
    mu1, xs1, ys1, ps1, xm1, ym1, pm1 = new
    st.mu[r], st.xs[r], st.ys[r], st.ps[r], st.xm[r], st.ym[r], st.pm[r] = new
    st.t[r] = ts if (fresh or restart) else max(t0, ts)
    st.floor[r] = fl
    st.miss[r] = miss
    w = 1.0 - mu1
    cx, cy = w * xs1 + mu1 * xm1, w * ys1 + mu1 * ym1
    sg = math.sqrt(w * ps1 + mu1 * pm1 + w * mu1 * ((xs1 - xm1) ** 2 + (ys1 - ym1) ** 2) / 2)
    ea = z_for(p.confidence) * sg
    if not skip and (precise or acc <= ea):
        return None
    return cx, cy, ea, sg


class EvidenceFence(NamedTuple):
    """A fence for classifying effective fixes: ``FenceIndex`` reads ``id``,
    ``floor``, ``geometry`` and ``circle`` (kept only when unchanged)."""

    id: str
    floor: int
    geometry: object
    circle: tuple | None


def evidence_fences(fences: Sequence[object], obstacles: dict, *, reach: float = 1.5) -> list[EvidenceFence]:
    """``fences`` (objects with ``id``, ``floor``, ``geometry`` and optional
    ``circle``) grown over ``obstacles`` (floor -> shapely geometry) as
    :func:`geometry.space.evidence_shapes` does, ready for ``FenceIndex``."""
    out: list[EvidenceFence] = []
    by_floor: dict[int, list] = {}
    for f in fences:
        by_floor.setdefault(int(f.floor), []).append(f)
    grown: dict[str, object] = {}
    for fl, fs in by_floor.items():
        obs = obstacles.get(fl)
        shapes = evidence_shapes([f.geometry for f in fs], obs, reach=reach) if obs is not None else None
        for i, f in enumerate(fs):
            grown[str(f.id)] = shapes[i] if shapes is not None else f.geometry
    for f in fences:
        g = grown[str(f.id)]
        circle = getattr(f, "circle", None) if g is f.geometry else None
        out.append(EvidenceFence(str(f.id), int(f.floor), g, circle))
    return out

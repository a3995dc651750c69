"""Calibrating a positioning source's accuracy (issue 21): how much to scale
the ``acc`` it reports (or the default the agent assumes) so that the circle
covers the truth as often as a ``acc_sigmas``-σ circle should.

A 2-D isotropic Gaussian error falls within ``k σ`` of the truth with
probability ``1 − exp(−k² / 2)``: 86.5 % for the 2σ ``acc`` the agent reads
(``[tracking] acc_sigmas = 2``), 67.5 % for a phone's 1.5σ.

* :func:`scale_from_survey` — from fixes taken where the truth was noted
  (a site survey with the engine's fixes beside the surveyed ``x``/``y``):
  the factor that makes ``scale · acc`` cover that share of the errors.
* :func:`scale_from_spread` — without the truth, from the fixes' own spread
  while the device stood still (a phone left on a shelf for a few minutes):
  their scatter around their own mean is the noise, so ``acc_sigmas ·
  σ_spread`` is what ``acc`` should be.  It cannot see a bias that every fix
  shares (an engine that puts the whole shelf 3 m to the left), which only a
  survey measures.

The result goes into ``[tracking.acc_scale]`` (source -> factor).  Pure:
numpy only.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["coverage_of", "scale_from_spread", "scale_from_survey"]


def coverage_of(acc_sigmas: float = 2.0) -> float:
    """Share of a 2-D isotropic Gaussian's mass within ``acc_sigmas`` σ."""
    return 1.0 - math.exp(-acc_sigmas * acc_sigmas / 2.0)


def scale_from_survey(err, acc, *, acc_sigmas: float = 2.0) -> float:
    """Factor on ``acc`` so that ``factor · acc`` covers the errors ``err``
    (metres, fix to truth) as often as an ``acc_sigmas``-σ circle should."""
    err = np.asarray(err, dtype=float).ravel()
    acc = np.asarray(acc, dtype=float).ravel()
    ok = np.isfinite(err) & np.isfinite(acc) & (acc > 0)
    if err.size != acc.size or ok.sum() < 10:
        raise ValueError("need at least 10 fixes with an error and an accuracy")
    return float(np.quantile(err[ok] / acc[ok], coverage_of(acc_sigmas)))


def scale_from_spread(x, y, acc, *, acc_sigmas: float = 2.0) -> float:
    """Factor on ``acc`` from fixes of one device standing still: ``acc_sigmas
    · σ`` of their scatter (per axis, about their mean) over their median
    ``acc``."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    acc = np.asarray(acc, dtype=float).ravel()
    if not (x.size == y.size == acc.size) or x.size < 10:
        raise ValueError("need at least 10 fixes (x, y, acc) of a device standing still")
    sigma = math.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2.0)
    return float(acc_sigmas * sigma / np.median(acc))

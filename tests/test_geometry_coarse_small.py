"""The small-batch path for coarse fixes (plain Python per fix) against the
vectorised one (numpy over the batch): ``fuse_small`` against ``fuse`` on
random streams of fixes (several devices, out of order, gaps, floor changes,
outliers, weak and correlated fixes, NaN/inf/negative accuracies), carried
over many batches; ``ZoneProb.judge_small`` against ``ZoneProb.judge`` on
tests/test_geometry_fences_small.py's random stores; and the pipeline's
``_classify`` either side of its crossover on one store.  Pure: no broker."""

from __future__ import annotations

import json
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edge_agent.pipeline.core as core
from geometry.fences import FenceIndex
from geometry.fusion import FusionParams, FusionState, evidence_fences, fuse, fuse_small, z_for
from geometry.zoneprob import ZoneProb

from .test_geometry_fences_small import random_pings, random_store
from .test_pipeline import T0, Msg, make

_COLS = ("t", "mu", "xs", "ys", "ps", "xm", "ym", "pm", "floor", "miss")


def random_batches(rng: np.random.Generator, devices: int, batches: int):
    """Batches of fixes: a few devices wandering, with the cases fuse treats apart."""
    t = 0.0
    for _ in range(batches):
        n = int(rng.integers(1, 30))
        rows = rng.integers(0, devices, n)
        ts = t + rng.uniform(-5, 5, n)  # some late, some out of order within the batch
        ts[rng.random(n) < 0.05] += rng.choice([-100.0, 100.0])  # a gap: the estimate restarts
        t += float(rng.choice([0.5, 2.0, 30.0, 90.0]))
        x = rows * 10.0 + rng.normal(0, 3, n)
        y = rng.normal(5, 3, n)
        far = rng.random(n) < 0.05  # an outlier
        x[far] += 300.0
        floor = np.where(rng.random(n) < 0.05, 1, 0)
        acc = rng.choice([0.3, 1.0, 2.0, 3.0, 8.0, 8.0, 15.0, 40.0], n)
        odd = rng.random(n) < 0.05
        acc[odd] = rng.choice([np.nan, np.inf, -1.0, 0.0], int(odd.sum()))
        x[rng.random(n) < 0.02] = np.nan
        ts[rng.random(n) < 0.02] = np.nan
        yield rows, x, y, floor, acc, ts, rng.random(n) < 0.2, rng.random(n) < 0.3


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([None, "weak", "both"]))
def test_fuse_small_matches_fuse(seed, flags):
    rng = np.random.default_rng(seed)
    params = FusionParams(confidence=float(rng.choice([0.6, 0.9, 0.99])))
    a, b = FusionState(4), FusionState(4)
    devices = int(rng.integers(1, 8))
    for s in (a, b):
        for _ in range(devices):
            s.alloc()
    for rows, x, y, floor, acc, ts, weak, corr in random_batches(rng, devices, 12):
        kw = {"weak": weak if flags else None, "correlated": corr if flags == "both" else None}
        want = fuse(a, rows, x, y, floor, acc, ts, params, **kw)
        got = fuse_small(b, rows.tolist(), x.tolist(), y.tolist(), floor.tolist(), acc.tolist(), ts.tolist(),
                         params, **{k: None if v is None else v.tolist() for k, v in kw.items()})
        assert [g[4] for g in got] == want.passed.tolist()
        for k, col in enumerate(want[:4]):
            np.testing.assert_allclose([g[k] for g in got], col, rtol=1e-9, atol=1e-9)
        for c in _COLS:  # and the state the next batch starts from
            np.testing.assert_allclose(getattr(b, c), getattr(a, c), rtol=1e-9, atol=1e-9)


def judges(fences) -> list[ZoneProb]:
    """ZoneProbs over the raw fences and over the fences grown across shelves and
    obstacles, as the pipeline builds them (pipeline/state.py)."""
    from shapely import union_all

    from geometry.space import obstacles_on

    walk = [f for f in fences if f.kind != "obstacle"]
    out = [ZoneProb(FenceIndex(walk), walk)]
    obstacles = {fl: union_all(parts) for fl in {f.floor for f in fences} if (parts := obstacles_on(fences, fl))}
    if obstacles and walk:
        grown = evidence_fences(walk, obstacles)
        out.append(ZoneProb(FenceIndex(grown), grown))
    return out


def _near_a_threshold(zp: ZoneProb, x, y, floor, sigma, confidence, z) -> np.ndarray:
    """Per position: a candidate's P(inside) lies within 1e-6 of a threshold, where
    erf and its 1e-7 approximation (norm_cdf) may decide differently."""
    _, hits, p = zp.judge(x, y, floor, sigma, confidence, z)
    near = (np.abs(p - confidence) < 1e-6) | (np.abs(p - (1.0 - confidence)) < 1e-6)
    ping = np.repeat(np.arange(len(x)), np.diff(hits.indptr))
    return np.bincount(ping[near], minlength=len(x)) > 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_judge_small_matches_judge(seed):
    rng = np.random.default_rng(seed)
    fences = random_store(rng)
    for zp in judges(fences):
        n = 200
        x, y, floor, sigma = random_pings(rng, fences, n)
        sigma = np.where(rng.random(n) < 0.5, rng.uniform(0.05, 4, n), sigma)
        confidence = float(rng.choice([0.6, 0.9, 0.99]))
        z = z_for(confidence)
        want, _, _ = zp.judge(x, y, floor, sigma, confidence, z)  # vectorised: a batch of more than one
        got = zp.judge_small(x.tolist(), y.tolist(), floor.tolist(), sigma.tolist(), confidence, z)
        near = _near_a_threshold(zp, x, y, floor, sigma, confidence, z)
        assert [g for g, t in zip(got, near) if not t] == [w for w, t in zip(want, near) if not t]
        assert near.mean() < 0.05


def coarse(device: str, x: float, y: float, t: float, acc: float, kind: str = "wifi") -> Msg:
    return Msg(f"store/S1/ping/{kind}/{device}", json.dumps({"x": x, "y": y, "acc": acc}).encode(), received=t)


@pytest.mark.parametrize("seed", range(8))
def test_pipeline_classifies_alike_either_side_of_the_crossover(seed, tmp_path, monkeypatch):
    """Whole steps of coarse and precise pings, in batches of one to five, through the
    per-ping path and through the vectorised one: the same effects and the same tracks."""
    rng = np.random.default_rng(seed)
    homes = {f"d{k}": (float(rng.uniform(0, 30)), float(rng.uniform(0, 20))) for k in range(4)}
    msgs, t = [], T0
    for _ in range(150):
        t += float(rng.uniform(0.1, 3))
        d = f"d{int(rng.integers(0, 4))}"
        if rng.random() < 0.1:  # a shopper moves on
            homes[d] = (float(rng.uniform(0, 30)), float(rng.uniform(0, 20)))
        acc = float(rng.choice([0.3, 3.0, 8.0, 8.0, 20.0]))
        x, y = (float(v) for v in rng.normal(homes[d], acc / 2))
        kind = "uwb" if acc < 1 else "wifi"
        msgs.append(Msg(f"store/S1/ping/{kind}/{d}", json.dumps({"x": x, "y": y, "acc": acc}).encode(), received=t))
    cuts = np.cumsum(rng.integers(1, 6, len(msgs))).tolist()
    batches = [msgs[a:b] for a, b in zip([0] + cuts, cuts) if a < len(msgs)]
    seen = {}
    for small in (0, 10_000):
        monkeypatch.setattr(core, "SMALL_COARSE", small)
        p = make(tmp_path / str(small))
        out = []
        for chunk in batches:
            p.step(chunk, chunk[-1].received)
            fx = p.take()
            out.append(([repr(o) for o in fx.offers], [repr(r) for r in fx.rows],
                        {d: (dict(tr.inside), tr.last_seen) for d, tr in p.tracks.items()}))
        seen[small] = out
    assert seen[0] == seen[10_000]
    assert any(inside for *_, tracks in seen[0] for inside, _ in tracks.values())  # the walk entered somewhere

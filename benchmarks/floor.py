"""The floor's cost on the hot path: the pure pipeline step with the floor room
on, side by side with its hooks stubbed out, in one run (interleaved rounds).

    python -m benchmarks.floor [--devices 5000] [--batch 500] [--rounds 6]

Every ping moves its device to a random point of a 60 x 40 m store with 40
fences (capacity on all, a checkout with a queue), so a good share of pings
are transitions — the worst case for the floor, which works per transition.
Prints pings/s for both and the ratio (on / off; the issue asks ≥ 0.95), and the
floor hooks' share of the step timed inside one run (steadier on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_agent.metrics import Metrics
from edge_agent.pipeline import Pipeline, State, build_runtime
from store_config.load import load_store
from sync.pseudonym import Pseudonymizer
from tests.conftest import write_store


class _Msg:
    __slots__ = ("topic", "payload", "qos", "mid", "received", "retain")

    def __init__(self, topic: str, payload: bytes, received: float):
        self.topic, self.payload, self.qos, self.mid, self.received, self.retain = topic, payload, 0, 0, received, False


class _NoOffers:
    def get_offer(self, offer_id):
        return None


def layout() -> dict:
    feats = []
    for i in range(8):
        for j in range(5):
            x, y = 1 + i * 7.4, 1 + j * 7.8
            kind = "checkout" if (i, j) == (0, 0) else "aisle"
            props = {"id": f"z{i}-{j}", "kind": kind, "capacity": 30}
            if kind == "checkout":
                props["queue_alert_at"] = 5
            feats.append({"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [
                [[x, y], [x + 6, y], [x + 6, y + 6.5], [x, y + 6.5], [x, y]]]}})
    return {"type": "FeatureCollection", "frame": "local", "features": feats}


def make(tmp: Path, floor_on: bool) -> Pipeline:
    cfg = load_store(write_store(tmp, broker_url="mqtt://127.0.0.1:1", store_id="B1", layout=layout(),
                                 promotions=[], toml_extra="[tracking]\nsustained_pings = 0\n"))
    pseudo = Pseudonymizer(b"k" * 32)
    p = Pipeline(State(build_runtime(cfg), pseudonym=pseudo.device, fraction=pseudo.fraction),
                 metrics=Metrics(), offers=_NoOffers())
    if not floor_on:
        f = p.floor
        f.on_transitions = lambda *a: None
        f.on_visit = lambda *a: None
        f.on_gone = lambda *a: None
    return p


def run(p: Pipeline, batches: list[list[_Msg]], t0: float) -> float:
    start = time.perf_counter()
    for k, b in enumerate(batches):
        p.step(b, t0 + k * 0.01)
        if k % 100 == 99:
            p.tick(t0 + k * 0.01, t0 + k * 0.01)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--pings", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    rng = np.random.default_rng(7)
    t0 = 1_763_800_000.0
    n = a.pings
    dev = rng.integers(0, a.devices, n)
    xs, ys = rng.uniform(0, 60, n), rng.uniform(0, 40, n)
    msgs = [_Msg(f"store/B1/ping/uwb/d{d}", json.dumps({"x": round(x, 2), "y": round(y, 2), "acc": 0.3}).encode(),
                 t0 + i * 1e-4) for i, (d, x, y) in enumerate(zip(dev.tolist(), xs.tolist(), ys.tolist()))]
    batches = [msgs[i:i + a.batch] for i in range(0, n, a.batch)]
    best = {True: 0.0, False: 0.0}
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            for on in ((True, False) if r % 2 else (False, True)):
                p = make(Path(d) / f"{r}-{on}", on)
                rate = n / run(p, batches, t0)
                best[on] = max(best[on], rate)
        # The floor's own share of a step, timed inside one run (robust to a busy machine).
        p = make(Path(d) / "check", True)
        spent = [0.0]
        for name in ("on_transitions", "on_visit", "on_gone"):
            fn = getattr(p.floor, name)

            def timed(*args, _fn=fn):
                s0 = time.perf_counter()
                _fn(*args)
                spent[0] += time.perf_counter() - s0
            setattr(p.floor, name, timed)
        total = run(p, batches, t0)
        transitions = sum(p.metrics.transitions.values.values())
    print(f"pings {n}, devices {a.devices}, batch {a.batch}, transitions {int(transitions)}")
    print(f"floor off: {best[False]:,.0f} pings/s   floor on: {best[True]:,.0f} pings/s   "
          f"ratio {best[True] / best[False]:.3f}")
    print(f"floor hooks: {spent[0] / total:.1%} of the step's time "
          f"({spent[0] / max(transitions, 1) * 1e6:.2f} µs per transition, timer included)")


if __name__ == "__main__":
    main()

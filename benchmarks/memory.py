"""Memory per tracked device, the way the agent holds it.

Per device the agent keeps (edge_agent/service.py): ``tracks[device]`` (a
``geometry.tracking.DeviceTrack``), the pseudonym cache entry
(``sync.pseudonym.Pseudonymizer``: raw id -> ``d_...``), and, once a device
has been offered something, ``histories[pseudonym]`` (a
``decisions.OfferHistory``).  This script drives exactly that: N devices
(app-style UUID ids) each send a few pings over a synthetic store
(benchmarks/_synth.py), classified by ``FenceIndex`` and stepped through
``geometry.tracking.step``; devices that enter a fence get a pseudonym and
(``--offered`` of them) an ``OfferHistory`` with one promotion, as the agent
does.  Measured two ways:

* tracemalloc: bytes allocated and still held by the per-device state,
  divided by N;
* RSS: resident-set growth of the process while the state is built (in a
  fresh child process per N, so the figures do not share a heap), over N.

    python benchmarks/memory.py
    python benchmarks/memory.py --devices 10000,100000,300000
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks._common import machine, table, write_json  # noqa: E402


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def build_state(n: int, fences: int, pings: int, offered: float, seed: int, trace: bool, acc_mode="mix") -> dict:
    from benchmarks._synth import make_fences, make_points
    from edge_agent.decisions import OfferHistory
    from geometry.fences import FenceIndex
    from geometry.tracking import Entered, TrackParams, step
    from sync.pseudonym import Pseudonymizer

    fs = make_fences(fences, seed=seed)
    idx = FenceIndex(fs)
    params = TrackParams(timeout_s=120.0, sustained_pings=3, halfwidth=idx.halfwidth,
                         dwell_s={f.id: 20.0 for f in fs[::10]})
    rng = np.random.default_rng(seed)
    # each device browses around one spot: its pings jitter by ~1 m around it
    bx, by, bfl, bacc = make_points(fs, n, seed=seed + 1, acc=acc_mode)
    k = np.arange(n * pings) % n
    x = bx[k] + rng.normal(0, 1.0, k.size)
    y = by[k] + rng.normal(0, 1.0, k.size)
    fl, acc = bfl[k], bacc[k]
    idx.classify_hits(x, y, fl, acc)  # build the index's lazy grids now: they are not per device
    pseudo = Pseudonymizer(b"k" * 32)
    tracks: dict = {}
    histories: dict = {}
    gc.collect()
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    rss0 = _rss()
    ids = [str(uuid.UUID(int=int(v))) for v in rng.integers(0, 2**62, n)]  # app instance ids, held as keys
    batch = 5000
    stats = {"inside_fences": 0, "with_history": 0}
    for s in range(0, n * pings, batch):
        e = min(s + batch, n * pings)
        matches = idx.classify(x[s:e], y[s:e], fl[s:e], acc[s:e])
        for j, m in enumerate(matches):
            k = s + j
            dev = ids[k % n]
            now = 1000.0 + k / n * 2.0  # each device pings every 2 s
            track, events = step(tracks.get(dev), m, now, params, acc=float(acc[k]))
            tracks[dev] = track
            if events and any(isinstance(ev, Entered) for ev in events):
                p = pseudo.device(dev)
                if p not in histories and (hash(dev) % 1000) < offered * 1000:
                    h = histories[p] = OfferHistory()
                    h.record("promo-1", now, "2025-11-28")
    del matches
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base if trace else None
    if trace:
        tracemalloc.stop()
    rss = _rss() - rss0
    stats["inside_fences"] = sum(len(t.inside) for t in tracks.values()) / max(len(tracks), 1)
    stats["with_history"] = len(histories) / n
    stats["pseudonyms"] = len(pseudo._cache) / n
    return {"devices": n, "tracked": len(tracks), "traced_bytes": held, "rss_bytes": rss,
            "traced_per_device": held / n if held is not None else None, "rss_per_device": rss / n, **stats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--devices", default="10000,100000", help="device counts (default %(default)s)")
    ap.add_argument("--fences", type=int, default=5000, help="fences in the store (default %(default)s)")
    ap.add_argument("--pings", type=int, default=5, help="pings per device (default %(default)s)")
    ap.add_argument("--offered", type=float, default=0.5,
                    help="share of entering devices that hold an OfferHistory (default %(default)s)")
    ap.add_argument("--acc", default="mix,0.3",
                    help="accuracy scenarios: 'mix' and/or metres; 0.3 (UWB) puts most devices inside "
                         "fences, the heavier state (default %(default)s)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", default=None, help="output file (default benchmarks/results/memory.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one measurement in this (fresh) process
        n, trace, acc = args.child.split(":")
        acc_mode = acc if acc == "mix" else float(acc)
        print(json.dumps(build_state(int(n), args.fences, args.pings, args.offered, args.seed, trace == "1",
                                     acc_mode)))
        return 0
    out = {"benchmark": "memory", "machine": machine(), "args": vars(args), "results": []}
    for n, acc in ((int(s), a) for a in args.acc.split(",") if a for s in args.devices.split(",") if s):
        r = {}
        for trace in ("1", "0"):  # tracemalloc pass, then a clean RSS pass
            cmd = [sys.executable, __file__, "--child", f"{n}:{trace}:{acc}", "--fences", str(args.fences),
                   "--pings", str(args.pings), "--offered", str(args.offered), "--seed", str(args.seed)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            if trace == "1":
                r = res
            else:
                r["rss_bytes"], r["rss_per_device"] = res["rss_bytes"], res["rss_per_device"]
        r["acc"] = acc
        r["target_met"] = max(r["traced_per_device"], r["rss_per_device"]) <= 1024
        out["results"].append(r)
        print(f"  {n} devices, acc {acc} done", file=sys.stderr)
    rows = [[r["devices"], r["acc"], r["tracked"], r["inside_fences"], r["with_history"], r["traced_per_device"],
             r["rss_per_device"], "yes" if r["target_met"] else "no"] for r in out["results"]]
    print(table(["devices", "acc", "tracked", "fences in / device", "with history", "tracemalloc B/device",
                 "RSS B/device", "≤ 1 KB"], rows))
    print(f"\nwritten {write_json('memory.json', out, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

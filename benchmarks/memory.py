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

The tick (issue 12): ``--ticks`` devices are tracked the way the agent
holds them today (a dict, every track walked with ``geometry.tracking.tick``
each second) and with ``geometry.schedule.Tracks`` (``Tracks.due`` ticks
only the devices that are due), each in fresh child processes, on the same
pings.  Last pings are spread over 100 s, so once the first devices go
silent past the 120 s timeout each 1 s tick finds ~1 % of them due; one
tick at the start flushes the dwells reached so far, then ten 1 s ticks are
timed, and an idle tick (the same ``now`` again: nothing due).  Reported:
RSS growth per device (ids and tracks, with the heap for ``Tracks``), the
per-ping cost of the step (classification excluded), and the tick costs.

    python benchmarks/memory.py
    python benchmarks/memory.py --devices 10000,100000,300000
    python benchmarks/memory.py --devices '' --ticks 100000      # the tick comparison only
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
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
    from edge_agent.pipeline.decisions import OfferHistory
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


def tick_state(n: int, variant: str, fences: int, pings: int, seed: int, acc_mode="mix") -> dict:
    """Track ``n`` devices in a dict (``variant="walk"``: what the agent does
    today) or in ``Tracks`` (``"due"``), then time the ticks (see the module
    docstring).  One variant per fresh process."""
    from benchmarks._synth import make_fences, make_points
    from geometry.fences import FenceIndex
    from geometry.schedule import Tracks
    from geometry.tracking import TrackParams, step, tick

    fs = make_fences(fences, seed=seed)
    idx = FenceIndex(fs)
    params = TrackParams(timeout_s=120.0, sustained_pings=3, halfwidth=idx.halfwidth,
                         dwell_s={f.id: 20.0 for f in fs[::10]})
    rng = np.random.default_rng(seed)
    bx, by, bfl, bacc = make_points(fs, n, seed=seed + 1, acc=acc_mode)
    k = np.arange(n * pings) % n
    x = bx[k] + rng.normal(0, 1.0, k.size)
    y = by[k] + rng.normal(0, 1.0, k.size)
    fl, acc = bfl[k], bacc[k]
    idx.classify_hits(x, y, fl, acc)  # the index's lazy grids: not per device
    t0 = 1_700_000_000.0
    # device i pings every 2 s; its last ping is at t0 + 2 (pings - 1) + 100 i / n
    times = t0 + (np.arange(n * pings) // n) * 2.0 + 100.0 * k / n
    gc.collect()
    rss0 = _rss()
    ids = [str(uuid.UUID(int=int(v))) for v in rng.integers(0, 2**62, n)]
    walk = variant == "walk"
    tracks = {} if walk else Tracks()
    stepping = 0.0
    batch = 5000
    for s in range(0, n * pings, batch):
        e = min(s + batch, n * pings)
        matches = idx.classify(x[s:e], y[s:e], fl[s:e], acc[s:e])
        nows = times[s:e].tolist()
        accs = acc[s:e].tolist()
        c0 = time.perf_counter()
        if walk:
            for j, m in enumerate(matches):
                dev = ids[(s + j) % n]
                track, _ = step(tracks.get(dev), m, nows[j], params, acc=accs[j])
                tracks[dev] = track
        else:
            for j, m in enumerate(matches):
                tracks.step(ids[(s + j) % n], m, nows[j], params, acc=accs[j])
        stepping += time.perf_counter() - c0
    del matches
    gc.collect()
    rss = _rss() - rss0

    def walk_tick(now: float) -> int:  # edge_agent/service.py Agent.tick, today
        hit = 0
        for device, track in list(tracks.items()):
            new, events = tick(track, now, params)
            if new is None:
                del tracks[device]
            if new is None or events:
                hit += 1
        return hit

    def due_tick(now: float) -> int:
        return len(tracks.due(now, params))

    run = walk_tick if walk else due_tick
    start = t0 + 2.0 * (pings - 1) + 120.0
    c0 = time.perf_counter()
    flushed = run(start)  # the dwells reached while the pings were stepped
    first = time.perf_counter() - c0
    costs, due = [], []
    for i in range(1, 11):
        c0 = time.perf_counter()
        due.append(run(start + i))
        costs.append(time.perf_counter() - c0)
    c0 = time.perf_counter()
    idle_due = run(start + 10)
    idle = time.perf_counter() - c0
    return {"devices": n, "variant": variant, "rss_bytes": rss, "rss_per_device": rss / n,
            "step_us_per_ping": stepping / (n * pings) * 1e6, "first_tick_ms": first * 1e3,
            "first_tick_due": flushed, "tick_ms": sum(costs) / len(costs) * 1e3, "tick_ms_max": max(costs) * 1e3,
            "due_per_tick": sum(due) / len(due), "idle_tick_ms": idle * 1e3, "idle_due": idle_due,
            "left": len(tracks)}


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
    ap.add_argument("--ticks", default="100000",
                    help="device counts for the tick comparison, '' to skip (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="child processes per tick variant; the fastest ticks are kept (default %(default)s)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", default=None, help="output file (default benchmarks/results/memory.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child and args.child.startswith("ticks:"):  # one tick measurement in this (fresh) process
        _, n, variant = args.child.split(":")
        print(json.dumps(tick_state(int(n), variant, args.fences, args.pings, args.seed)))
        return 0
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
    if out["results"]:
        rows = [[r["devices"], r["acc"], r["tracked"], r["inside_fences"], r["with_history"],
                 r["traced_per_device"], r["rss_per_device"], "yes" if r["target_met"] else "no"]
                for r in out["results"]]
        print(table(["devices", "acc", "tracked", "fences in / device", "with history", "tracemalloc B/device",
                     "RSS B/device", "≤ 1 KB"], rows))
        print(f"\nwritten {write_json('memory.json', out, args.json)}")
    if args.ticks:
        ticks = {"benchmark": "memory-ticks", "machine": out["machine"], "args": vars(args), "results": []}
        for n in (int(v) for v in args.ticks.split(",") if v):
            runs: dict[str, list] = {"walk": [], "due": []}
            for _ in range(args.repeat):  # alternate the variants, so load on the box hits both alike
                for variant in runs:
                    cmd = [sys.executable, __file__, "--child", f"ticks:{n}:{variant}", "--fences",
                           str(args.fences), "--pings", str(args.pings), "--seed", str(args.seed)]
                    runs[variant].append(json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                                   text=True).stdout))
            best = {v: min(rs, key=lambda r: r["tick_ms"]) for v, rs in runs.items()}
            ratio = best["walk"]["tick_ms"] / best["due"]["tick_ms"]
            ticks["results"].append({"devices": n, "runs": runs, "best": best, "tick_ratio": ratio})
            print(f"  ticks: {n} devices done", file=sys.stderr)
        rows = []
        for r in ticks["results"]:
            for v, label in (("walk", "dict, tick every track (today)"), ("due", "Tracks.due")):
                b = r["best"][v]
                rows.append([r["devices"], label, b["rss_per_device"], b["step_us_per_ping"], b["due_per_tick"],
                             b["tick_ms"], b["idle_tick_ms"], min(x["rss_per_device"] for x in r["runs"][v])])
        print(table(["devices", "tracks held in", "RSS B/device", "step µs/ping", "due / tick", "tick ms (1 s, mean)",
                     "idle tick ms", "min RSS B/device"], rows))
        for r in ticks["results"]:
            print(f"{r['devices']:,} devices: a tick with ~1 % due costs {r['tick_ratio']:.0f}× less with Tracks.due")
        print(f"\nwritten {write_json('memory-ticks.json', ticks)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""An offer's batch in one quiet process: the loop thread's CPU time from the
batch's hand-over to the offer's write, and in all (the second commit after it).

e2e.py measures ping→offer from outside, with the broker, two load
generators, a listener and the agent sharing the machine's cores; its stage
log (``--stages-log``) splits an offer's batch as the agent lived it.  This
runs the same code alone: the e2e store (400 fences, a promotion on each),
its ping stream in batches of ``--batch`` messages, handed to
``Agent.on_batch`` as paho's read callback hands them, with a real Mosquitto
behind the agent's client.  A batch holding a fresh entry yields an offer;
the rest are pings inside nothing or in the fence the device is in.  The
ratio of e2e's figure to this one is what the contention costs.

    python benchmarks/offer_batch.py                       # 30,000 pings in batches of 2
    python benchmarks/offer_batch.py --pings 60000 --profile /tmp/offer.prof
    python benchmarks/offer_batch.py --compare-git 2cdc6f1 --rounds 10   # this tree and REV, alternating

A run's p50 swings by ±10 % on a shared VM: compare trees over rounds (medians), or
pieces of one tree paired inside one process (``offer_pieces.py``).

Writes benchmarks/results/offer_batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, start_mosquitto, write_json
from e2e import git_tree, ping_stream, write_store

from edge_agent.runner import Server
from store_config import load_store


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def is_entry(payload: bytes) -> bool:
    """ping_stream's fresh entry: (1, 1) into a fence's cell."""
    p = json.loads(payload)
    return abs(p["x"] % 4.0 - 1.0) < 1e-9 and abs(p["y"] % 4.0 - 1.0) < 1e-9


async def measure(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="offer-batch-"))
    broker, port = start_mosquitto(work)
    try:
        server = Server(load_store(write_store(work, port, 0, "OB")), listen="127.0.0.1:0")
        await server.start()
        await asyncio.wait_for(server.agent.mqtt.subscribed.wait(), 10)
        agent, mqtt = server.agent, server.agent.mqtt
        msgs = ping_stream("OB", args.pings, args.devices, args.entry_share)
        batches = [msgs[i:i + args.batch] for i in range(0, len(msgs), args.batch)]
        sent: list[int] = []
        send_now = mqtt.send_now
        prof = cProfile.Profile() if args.profile else None

        def timed_send_now() -> None:
            sent.append(time.thread_time_ns())
            if prof is not None:
                prof.disable()  # the profile covers the offer's path, not the second commit
            send_now()

        mqtt.send_now = timed_send_now
        to_send, offer_all, other_all = [], [], []
        for i, batch in enumerate(batches):
            entry = any(is_entry(m.payload) for m in batch)
            now = time.time()
            for m in batch:
                m.received = now
            sent.clear()
            if entry and prof is not None:
                prof.enable()
            t0 = time.thread_time_ns()
            mqtt._reading = True  # as inside paho's read callback: the offer is written by send_now
            try:
                agent.on_batch(batch)
            finally:
                mqtt._reading = False
            mqtt._write_now()
            t1 = time.thread_time_ns()
            if prof is not None:
                prof.disable()
            if entry:
                offer_all.append((t1 - t0) / 1e3)
                if sent:
                    to_send.append((sent[0] - t0) / 1e3)
            else:
                other_all.append((t1 - t0) / 1e3)
            if i % 50 == 0:
                await asyncio.sleep(0)  # PUBACKs, ticks
        mqtt.send_now = send_now
        await server.stop()
        if prof is not None:
            prof.dump_stats(args.profile)
    finally:
        broker.terminate()
        broker.wait()
    skip = lambda xs: xs[len(xs) // 5:]  # noqa: E731 - the first fifth warms up
    out = {}
    for name, xs in (("offer_to_write", skip(to_send)), ("offer_batch", skip(offer_all)),
                     ("other_batch", skip(other_all))):
        out[name] = {"n": len(xs), "p50_us": round(statistics.median(xs), 1), "p90_us": round(pct(xs, 90), 1),
                     "mean_us": round(statistics.mean(xs), 1)}
    return out


KEYS = (("offer batch: hand-over → write", "offer_to_write"), ("offer batch: in all", "offer_batch"),
        ("other batches", "other_batch"))


def compare(args) -> int:
    """This tree and ``--compare-git REV`` in turns (which goes first alternates), one
    process a run: each run's p50s, and their medians over the rounds."""
    work = Path(tempfile.mkdtemp(prefix="offer-batch-trees-"))
    trees = {"now": ROOT, args.compare_git: git_tree(args.compare_git, work)}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in (list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]):
            out = work / f"{name}-{r}.json"
            subprocess.run([sys.executable, str(tree / "benchmarks" / "offer_batch.py"), "--pings", str(args.pings),
                            "--batch", str(args.batch), "--out", str(out)], cwd=tree, check=True,
                           env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True)
            runs[name].append(json.loads(out.read_text()))
            print(f"round {r + 1}  {name:<10} " + "  ".join(
                f"{key} {runs[name][-1][key]['p50_us']:.1f}" for _, key in KEYS), flush=True)
    print(f"\n{'p50 µs, median of ' + str(args.rounds) + ' rounds':<34} " + " ".join(f"{n:>10}" for n in trees))
    summary = {}
    for label, key in KEYS:
        meds = {n: round(statistics.median(x[key]["p50_us"] for x in runs[n]), 1) for n in trees}
        summary[key] = meds
        print(f"{label:<34} " + " ".join(f"{meds[n]:>10.1f}" for n in trees))
    write_json("offer_batch_compare.json", {"machine": machine(), "args": vars(args), "median_p50_us": summary,
                                            "runs": {n: [{k: x[k] for _, k in KEYS} for x in xs]
                                                     for n, xs in runs.items()}}, args.out)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pings", type=int, default=30000)
    ap.add_argument("--batch", type=int, default=2, help="messages per batch (e2e's offer batches hold ~2)")
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--entry-share", type=float, default=0.02)
    ap.add_argument("--profile", metavar="FILE", help="cProfile the offer batches up to the offer's write")
    ap.add_argument("--compare-git", metavar="REV", help="also run the tree of git revision REV, in turns")
    ap.add_argument("--rounds", type=int, default=6, help="with --compare-git: runs of each tree")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.compare_git:
        return compare(args)
    res = asyncio.run(measure(args))
    print(f"{'thread CPU µs':<34} {'n':>6} {'p50':>8} {'p90':>8} {'mean':>8}")
    for label, key in KEYS:
        r = res[key]
        print(f"{label:<34} {r['n']:>6} {r['p50_us']:>8.1f} {r['p90_us']:>8.1f} {r['mean_us']:>8.1f}")
    write_json("offer_batch.json", {"machine": machine(), "args": vars(args), **res}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

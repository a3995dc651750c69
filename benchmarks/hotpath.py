"""The hot path in one process per tree: CPU per ping of a whole agent, this
tree against an older revision (and with the fused tracker off), same pings.

Each variant runs in a fresh interpreter (``PYTHONPATH`` = its tree), on
e2e's 400-fence store and e2e's ping stream (``metrics.ping_stream``: most
pings inside nothing or in the fence the device is already in, one in 50 a
fresh entry that gets an offer), fed through ``Agent.on_batch`` in batches of
``--batch`` with a private Mosquitto for the offers; the figure is the
agent's thread CPU time per ping.  Variants alternate over ``--rounds`` so a
drift in the machine's load hits each alike; report the median per variant
and the ratio to this tree.

    python benchmarks/hotpath.py --compare-git 8c699e2 --rounds 5 --pings 100000
    python benchmarks/hotpath.py --compare-git 8c699e2 --coarse-acc 8   # the pings outside fences coarse

Writes benchmarks/results/hotpath.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


async def worker(args) -> dict:
    from _common import free_port, start_mosquitto

    # _common puts this checkout first on sys.path: the tree under test goes before it,
    # before anything imports edge_agent
    sys.path.insert(0, os.environ.get("HOTPATH_TREE", str(ROOT)))
    from e2e import ping_stream, write_store

    from edge_agent.service import Agent
    from store_config import load_store

    work = Path(tempfile.mkdtemp(prefix="hotpath-"))
    mosq, port = start_mosquitto(work)
    try:
        cfg = load_store(write_store(work, port, free_port(), "H1"))
        if args.no_fusion:  # [tracking] fusion = false (only trees that have it)
            cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, fusion=False))
        agent = Agent(cfg)
        await agent.start()
        stream = ping_stream("H1", args.pings, args.devices, args.entry_share)
        if args.coarse_acc:  # the pings outside every fence as coarse Wi-Fi fixes (through the filter)
            stream = [dataclasses.replace(m, payload=m.payload.replace(b'"acc": 1.0', b'"acc": %r' % args.coarse_acc))
                      if "/wifi/" in m.topic else m for m in stream]
        cpu = 0.0
        for start in range(0, len(stream), args.batch):
            now = time.time()
            batch = [dataclasses.replace(m, received=now) for m in stream[start:start + args.batch]]
            c0 = time.thread_time()
            agent.on_batch(batch)
            cpu += time.thread_time() - c0
            await asyncio.sleep(0)
        offers = agent.metrics.decisions.get("offered", "offered")
        await agent.stop()
        return {"pings": len(stream), "cpu_us_per_ping": cpu / len(stream) * 1e6, "offers": offers,
                "module": sys.modules["edge_agent"].__file__}
    finally:
        mosq.terminate()
        mosq.wait()
        shutil.rmtree(work, ignore_errors=True)


def git_tree(rev: str, dest: Path) -> Path:
    out = dest / rev
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare-git", metavar="REV", default=None, help="also time the agent of revision REV")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pings", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--entry-share", type=float, default=0.02)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--coarse-acc", type=float, default=0.0,
                    help="send the pings outside every fence (~half the load) as Wi-Fi fixes with this acc "
                         "(metres; > 1 goes through the fused tracker) instead of acc 1")
    ap.add_argument("--out", default=str(HERE / "results" / "hotpath.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-fusion", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(worker(args))))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="hotpath-trees-"))
    variants = {"now": (ROOT, False), "now, fusion off": (ROOT, True)}
    if args.compare_git:
        variants[args.compare_git] = (git_tree(args.compare_git, tmp), "")
    results: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for name in order:
                tree, no_fusion = variants[name]
                env = {**os.environ, "PYTHONPATH": str(tree), "HOTPATH_TREE": str(tree)}
                cmd = [sys.executable, str(HERE / "hotpath.py"), "--worker", "--pings", str(args.pings),
                       "--devices", str(args.devices), "--entry-share", str(args.entry_share),
                       "--batch", str(args.batch), "--coarse-acc", str(args.coarse_acc)] + (
                          ["--no-fusion"] if no_fusion else [])
                out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                assert res["module"].startswith(str(tree)), (name, res["module"])
                results[name].append(res["cpu_us_per_ping"])
                print(f"round {r + 1}  {name:<18} {res['cpu_us_per_ping']:7.2f} µs/ping  offers {res['offers']}",
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base, best = statistics.median(results["now"]), min(results["now"])
    summary = {name: {"median_us_per_ping": statistics.median(v), "best_us_per_ping": min(v), "runs": v,
                      "ratio_to_now": statistics.median(v) / base, "best_ratio_to_now": min(v) / best}
               for name, v in results.items()}
    print("\nvariant              median µs/ping   ratio   best µs/ping   ratio")
    for name, s in summary.items():
        print(f"{name:<20} {s['median_us_per_ping']:14.2f} {s['ratio_to_now']:7.3f} {s['best_us_per_ping']:14.2f} "
              f"{s['best_ratio_to_now']:7.3f}")
    Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The pure step alone, this tree against another revision, alternated
inside one process: CPU per ping of ``Pipeline.step`` (decode, position,
classify, track, decide; no commit, no broker) on hotpath's load.

``hotpath.py`` times a whole agent, one fresh interpreter per run; on a
shared virtual machine its runs differ by ±25 % (two variants that run the
same code differ that much), which hides a change of a few per cent.  Here
both trees run in the same process, their modules swapped between rounds
(the order alternating), and the figure to quote is the best round of each:
two copies of one tree differ by about 2 % on this box.

    python benchmarks/step_ab.py --compare-git main --rounds 10
    python benchmarks/step_ab.py --compare-git main --batch 5

Writes benchmarks/results/step_ab.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PKGS = ("edge_agent", "geometry", "store_config", "sync", "simulator", "e2e")
sys.path.insert(0, str(HERE))
import _common  # noqa: E402,F401 - puts this checkout on sys.path once, before the loop; each tree goes first


def _purge() -> None:
    for k in list(sys.modules):
        if k.split(".")[0] in PKGS:
            del sys.modules[k]


def run(tree: Path, pings: int, batch: int, devices: int, entry_share: float) -> float:
    """Thread CPU µs per ping of ``Pipeline.step`` with ``tree``'s packages (and e2e's store)."""
    _purge()
    sys.path.insert(0, str(tree))
    work = Path(tempfile.mkdtemp(prefix="step-ab-"))
    try:
        from e2e import ping_stream, write_store

        import edge_agent
        from edge_agent.metrics import Metrics
        from edge_agent.pipeline import Pipeline, State, build_runtime
        from store_config import load_store
        from sync.pseudonym import Pseudonymizer

        assert edge_agent.__file__.startswith(str(tree)), edge_agent.__file__
        cfg = load_store(write_store(work, 1, 2, "H1"))
        ps = Pseudonymizer(b"k" * 32)

        class NoOffers:
            def get_offer(self, offer_id):
                return None

        pl = Pipeline(State(build_runtime(cfg), pseudonym=ps.device, fraction=ps.fraction), metrics=Metrics(),
                      offers=NoOffers())
        msgs = ping_stream("H1", pings, devices, entry_share)
        cpu = 0.0
        for s in range(0, len(msgs), batch):
            now = time.time()
            chunk = [dataclasses.replace(m, received=now) for m in msgs[s:s + batch]]
            c0 = time.thread_time()
            pl.step(chunk, now)
            pl.take()
            cpu += time.thread_time() - c0
        return cpu / len(msgs) * 1e6
    finally:
        sys.path.remove(str(tree))
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare-git", metavar="REV", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--pings", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--entry-share", type=float, default=0.02)
    ap.add_argument("--out", default=str(HERE / "results" / "step_ab.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="step-ab-trees-"))
    try:
        other = tmp / "tree"
        other.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare_git], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(other)], input=archive, check=True)
        trees = {"now": ROOT, args.compare_git: other}
        res: dict[str, list[float]] = {k: [] for k in trees}
        for r in range(args.rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                res[name].append(run(trees[name], args.pings, args.batch, args.devices, args.entry_share))
                print(f"round {r + 1}  {name:<12} {res[name][-1]:7.2f} µs/ping", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = min(res["now"])
    print(f"\n{'variant':<14}{'best µs/ping':>14}{'ratio':>8}{'median':>10}   (batch {args.batch})")
    summary = {}
    for name, v in res.items():
        summary[name] = {"best_us_per_ping": min(v), "median_us_per_ping": statistics.median(v), "runs": v,
                         "best_ratio_to_now": min(v) / best}
        print(f"{name:<14}{min(v):14.2f}{min(v) / best:8.3f}{statistics.median(v):10.2f}")
    Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

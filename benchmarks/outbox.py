"""Durable outbox appends per second: ``Ledger.event`` + ``Ledger.commit``.

The agent's real ledger (edge_agent/storage/ledger.py: SQLite, WAL,
``synchronous=NORMAL``) on a real file (``--dir``, default a temporary
directory on the same file system as the repository's benchmarks/results,
i.e. the disk, not tmpfs).  Each run appends ``--events`` transition events
(a realistic body: pseudonymous device, zone, event) and commits every
``group`` rows: 1 (one commit per event, what "no per-ping commits" avoids),
10, 100 and 1000.  The figure is events/s including the commits.

    python benchmarks/outbox.py
    python benchmarks/outbox.py --groups 1,100 --events 50000 --dir /var/lib/edge
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import RESULTS, machine, table, write_json  # noqa: E402


def run(directory: Path, group: int, events: int, repeat: int) -> dict:
    from edge_agent.storage.ledger import Ledger

    best = float("inf")
    for r in range(repeat):
        path = directory / f"outbox-{group}-{r}.sqlite3"
        led = Ledger(path, store_id="S042")
        mode = led.conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = led.conn.execute("PRAGMA synchronous").fetchone()[0]
        pseudo = [f"d_{i:026d}" for i in range(1000)]
        t0 = time.perf_counter()
        for i in range(events):
            led.event("transition", 1_700_000_000.0 + i * 0.001, pseudo[i % 1000], event="enter",
                      zone=f"aisle-{i % 40}")
            if (i + 1) % group == 0:
                led.commit()
        led.commit()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        rows = led.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        assert rows == events, (rows, events)
        led.close()
    return {"group": group, "events": events, "seconds": best, "events_per_s": events / best,
            "commits_per_s": (events / group) / best, "journal_mode": mode, "synchronous": sync}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--groups", default="1,10,100,1000", help="rows per commit (default %(default)s)")
    ap.add_argument("--events", type=int, default=30_000, help="events per run (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (default %(default)s)")
    ap.add_argument("--dir", default=None, help="directory for the SQLite files (default: a temporary "
                    "directory under benchmarks/results)")
    ap.add_argument("--json", default=None, help="output file (default benchmarks/results/outbox.json)")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="outbox-", dir=RESULTS))
    out = {"benchmark": "outbox", "machine": machine(), "args": vars(args), "results": []}
    try:
        fstype = "unknown"
        try:
            import subprocess

            fstype = subprocess.run(["stat", "-f", "-c", "%T", str(tmp)], capture_output=True,
                                    text=True).stdout.strip()
        except OSError:
            pass
        out["filesystem"] = fstype
        for g in (int(s) for s in args.groups.split(",") if s):
            out["results"].append(run(tmp, g, args.events, args.repeat))
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    single = out["results"][0]["events_per_s"] if out["results"] else None
    rows = [[r["group"], r["events"], r["events_per_s"], r["commits_per_s"],
             r["events_per_s"] / single if single else None, r["journal_mode"],
             {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(r["synchronous"], r["synchronous"]),
             "yes" if r["events_per_s"] >= 50_000 else "no"] for r in out["results"]]
    print(f"file system: {out['filesystem']}")
    print(table(["rows/commit", "events", "events/s", "commits/s", "× group of 1", "journal", "synchronous",
                 "≥ 50k/s"], rows))
    print(f"\nwritten {write_json('outbox.json', out, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The chain report over N generated events: `edge-agent report --chain`
(streamed, spilling per-person sums to disk past a limit) against loading
the same exports into DuckDB and running the documented SQL
(docs/chain_load_duckdb.sql + docs/chain_report.sql), in one run.

Each side runs in its own child process; wall time and peak RSS
(``ru_maxrss`` from ``wait4``) are taken per child.  The exports are
generated once (``simulator.exports``: 20 stores, 2 promotions, gzip level
1) into ``--dir`` and kept for a re-run.

    python benchmarks/chain_report.py --events 1000000 --dir /tmp/chain-1m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, machine, table, write_json

from simulator.exports import PromoSpec, StoreSpec, write_export

EVENTS_PER_SHOPPER = 5.6  # measured on the generator's mix (2 transitions + 2 promotions)
STORES = 20

DUCKDB_CHILD = """
import sys, duckdb
files, promos, threads = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET enable_progress_bar = false")
load = open("docs/chain_load_duckdb.sql").read()
load = load.replace("'exports/*.jsonl.gz'", ", ".join(f"'{f}'" for f in files)).replace("'promotions.json'", f"'{promos}'")
con.execute(load)
rows = con.execute(open("docs/chain_report.sql").read()).fetchall()
print(sum(r[2] for r in rows))
"""


def child(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"child failed: {' '.join(cmd[:4])}...: {err.strip().splitlines()[-1:]}")
    return wall, ru.ru_maxrss / 1024, out


def generate(n: int, d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    shoppers = int(n / EVENTS_PER_SHOPPER / STORES)
    files = []
    total = 0
    for s in range(STORES):
        path = d / f"store-{s:02d}.jsonl.gz"
        files.append(path)
        spec = StoreSpec(f"store-{s:02d}", shoppers, (
            PromoSpec("apples", holdout=0.1 + 0.02 * s, lift=1.1), PromoSpec("bread", holdout=0.2, variants=("A", "B"))),
            scale=0.5 + s / 10)
        if path.exists():
            continue
        total += write_export(path, spec, seed=s)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/chain-bench")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2: the box's cores)")
    args = ap.parse_args()
    d = Path(args.dir)
    t0 = time.perf_counter()
    files = generate(args.events, d)
    gen_s = time.perf_counter() - t0
    lines = 0
    for f in files:  # count what was written (cheap next to the runs)
        import gzip
        with gzip.open(f, "rb") as g:
            lines += sum(1 for _ in g)
    promos = d / "promotions.json"
    promos.write_text(json.dumps([{"id": "apples", "title": "a", "discount": {"pct": 20}, "margin_pct": 30},
                                  {"id": "bread", "title": "b", "discount": {"amount": 1.5}}]))
    size = sum(f.stat().st_size for f in files)
    py = sys.executable
    ours = child([py, "-m", "edge_agent", "report", "--chain", *map(str, files), "--promotions", str(promos),
                  "--json"])
    offered = sum(v["offered"] for p in json.loads(ours[2])["promotions"].values() for v in p["variants"].values())
    duck = child([py, "-c", DUCKDB_CHILD, ",".join(map(str, files)), str(promos), str(args.threads)])
    assert int(float(duck[2].strip().splitlines()[-1])) == offered, (duck[2][-200:], offered)
    rows = [["edge-agent report --chain", f"{ours[0]:.1f}", f"{ours[1]:.0f}", f"{lines / ours[0] / 1e3:.0f}"],
            [f"DuckDB load + SQL ({args.threads} threads)", f"{duck[0]:.1f}", f"{duck[1]:.0f}",
             f"{lines / duck[0] / 1e3:.0f}"]]
    print(f"{lines:,} events in {len(files)} gzip exports ({size / 1e6:.0f} MB; generated in {gen_s:.0f} s)")
    print(table(["what", "wall s", "peak RSS MiB", "k events/s"], rows))
    write_json(f"chain_report-{args.events}", {"events": lines, "files": len(files), "bytes": size,
                                               "ours": {"wall_s": ours[0], "peak_rss_mib": ours[1]},
                                               "duckdb": {"wall_s": duck[0], "peak_rss_mib": duck[1],
                                                          "threads": args.threads},
                                               "machine": machine()})


if __name__ == "__main__":
    main()

"""Matcher benchmark: our FenceIndex against what a user would build instead.

On the same synthetic fences and pings (see benchmarks/_synth.py: aisles,
sections with holes, L-shapes, rotated aisles, circles; a per-technology
accuracy mix) it measures, per fence count:

* ``ours_hits``   — FenceIndex.classify_hits: the whole batch, full answer
  (inside / straddle / centre-in for the accuracy disc), CSR arrays;
* ``ours_match``  — FenceIndex.classify: the same, as one Match per ping;
* ``strtree``     — shapely STRtree.query(points, predicate="within"),
  batched, centre only (the "batched shapely" limit);
* ``brute``       — shapely brute force, per ping: contains_xy of the ping
  against every prepared fence of its floor (vectorised over the fences),
  centre only;
* ``postgis``     — PostgreSQL + PostGIS, fences in a table with a GiST
  index, one ``ST_Contains`` query per ping over a local socket (prepared
  statement), centre only.

The baselines answer less than we do (centre only, no accuracy disc); ours
is still checked against brute force and PostGIS on the sampled pings.

    python benchmarks/matcher.py                      # 500, 5,000, 50,000 fences
    python benchmarks/matcher.py --sizes 5000 --points 100000 --no-postgis
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import shapely  # noqa: E402

from benchmarks._common import best_of, machine, table, write_json  # noqa: E402
from benchmarks._synth import make_fences, make_points  # noqa: E402
from geometry.fences import CENTRE_IN, FenceIndex  # noqa: E402


def _centre_sets_ours(hits, rows) -> list[set[int]]:
    out = []
    for r in rows:
        s, e = hits.indptr[r], hits.indptr[r + 1]
        f, c = hits.fence[s:e], hits.code[s:e]
        out.append(set(f[(c & CENTRE_IN) != 0].tolist()))
    return out


def load_git_fences(rev: str):
    """geometry/fences.py as of git revision ``rev``, as a module (for a
    before/after comparison in the same run)."""
    import importlib.util
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "show", f"{rev}:geometry/fences.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="fences-")) / "fences_at_rev.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location("fences_at_rev", tmp)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fences_at_rev"] = mod
    spec.loader.exec_module(mod)
    return mod


def bench_size(n_fences: int, args, pg) -> dict:
    fences = make_fences(n_fences, seed=args.seed)
    x, y, fl, acc = make_points(fences, args.points, seed=args.seed + 1, acc=args.acc)
    res: dict = {"fences": len(fences), "points": args.points}
    t0 = time.perf_counter()
    idx = FenceIndex(fences)
    res["build_s"] = time.perf_counter() - t0
    # memory of the index with the grids of every accuracy class in the mix (built lazily)
    tracemalloc.start()
    probe = FenceIndex(fences)
    probe.classify_hits(x[:20000], y[:20000], fl[:20000], acc[:20000])
    res["index_mb"] = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    del probe
    idx.classify_hits(x, y, fl, acc)  # warm: lazily built grids
    res["ours_hits_s"] = best_of(lambda: idx.classify_hits(x, y, fl, acc), args.repeat)
    res["ours_hits_pps"] = args.points / res["ours_hits_s"]
    res["ours_match_s"] = best_of(lambda: idx.classify(x, y, fl, acc), args.repeat)
    res["ours_match_pps"] = args.points / res["ours_match_s"]
    t0 = time.perf_counter()
    lat = [idx.classify_one(float(x[i]), float(y[i]), int(fl[i]), float(acc[i])) for i in range(200)]
    res["ours_one_us"] = (time.perf_counter() - t0) / len(lat) * 1e6
    hits = idx.classify_hits(x, y, fl, acc)
    res["pairs_per_ping"] = hits.fence.size / args.points
    if args.compare_git:
        old = args.old_module.FenceIndex(fences)
        old.classify(x[:1000], y[:1000], fl[:1000], acc[:1000])
        res["old_match_pps"] = args.points / best_of(lambda: old.classify(x, y, fl, acc), args.repeat)
        res["match_vs_old"] = res["ours_match_pps"] / res["old_match_pps"]
        del old

    # shapely: batched STRtree (centre only)
    geoms = np.array([f.geometry for f in fences], dtype=object)
    floors = np.array([f.floor for f in fences])
    shapely.prepare(geoms)
    by_floor = {int(f): np.flatnonzero(floors == f) for f in np.unique(floors)}
    trees = {f: shapely.STRtree(geoms[i]) for f, i in by_floor.items()}
    pts = shapely.points(x, y)
    sel = {f: np.flatnonzero(fl == f) for f in by_floor}

    def strtree():
        for f, tree in trees.items():
            tree.query(pts[sel[f]], predicate="within")

    res["strtree_s"] = best_of(strtree, args.repeat)
    res["strtree_pps"] = args.points / res["strtree_s"]

    # shapely brute force, per ping, vectorised over the fences of its floor
    nb = min(args.brute_points, args.points)
    rows = np.arange(nb)
    brute_sets = []
    t0 = time.perf_counter()
    for i in rows:
        cand = by_floor.get(int(fl[i]))
        hit = cand[shapely.contains_xy(geoms[cand], x[i], y[i])] if cand is not None else []
        brute_sets.append(set(np.asarray(hit).tolist()))
    res["brute_points"] = nb
    res["brute_s"] = time.perf_counter() - t0
    res["brute_pps"] = nb / res["brute_s"]
    ours = _centre_sets_ours(hits, rows)
    res["agree_brute"] = sum(a == b for a, b in zip(ours, brute_sets)) / nb

    if pg is not None:
        res.update(bench_postgis(pg, fences, x, y, fl, hits, args))
    for k in ("brute", "strtree", "postgis"):
        if res.get(f"{k}_pps"):
            res[f"hits_vs_{k}"] = res["ours_hits_pps"] / res[f"{k}_pps"]
            res[f"match_vs_{k}"] = res["ours_match_pps"] / res[f"{k}_pps"]
    return res


def bench_postgis(pg, fences, x, y, fl, hits, args) -> dict:
    conn = pg.connect()
    try:
        conn.execute("DROP TABLE IF EXISTS fences")
        conn.execute("CREATE TABLE fences (fid integer PRIMARY KEY, id text NOT NULL, floor integer NOT NULL, "
                     "geom geometry(Geometry, 0) NOT NULL)")
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy("COPY fences (fid, id, floor, geom) FROM STDIN") as cp:
                for k, f in enumerate(fences):
                    cp.write_row((k, f.id, f.floor, shapely.to_wkb(f.geometry, hex=True)))
        conn.execute("CREATE INDEX fences_geom ON fences USING gist (geom)")
        conn.execute("ANALYZE fences")
        load_s = time.perf_counter() - t0
        q = ("SELECT fid FROM fences WHERE floor = %s AND "
             "ST_Contains(geom, ST_SetSRID(ST_MakePoint(%s, %s), 0))")
        n = min(args.pg_points, x.size)
        xs, ys, fs = x[:n].tolist(), y[:n].tolist(), fl[:n].tolist()
        cur = conn.cursor()
        for i in range(min(50, n)):  # warm up: plan cache, prepared statement
            cur.execute(q, (fs[i], xs[i], ys[i]), prepare=True).fetchall()
        got = []
        t0 = time.perf_counter()
        for i in range(n):
            got.append({r[0] for r in cur.execute(q, (fs[i], xs[i], ys[i]), prepare=True).fetchall()})
        dt = time.perf_counter() - t0
        ours = _centre_sets_ours(hits, range(n))
        # circles: PostGIS tests the 128-gon, we test the true circle; count exact agreement
        agree = sum(a == b for a, b in zip(ours, got)) / n
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + q, (fs[0], xs[0], ys[0])).fetchall())
        return {"postgis_load_s": load_s, "postgis_points": n, "postgis_s": dt, "postgis_pps": n / dt,
                "agree_postgis": agree, "postgis_uses_gist": "fences_geom" in plan}
    finally:
        conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sizes", default="500,5000,50000", help="fence counts, comma-separated (default %(default)s)")
    ap.add_argument("--points", type=int, default=200_000, help="pings per batch for ours and STRtree "
                    "(default %(default)s)")
    ap.add_argument("--brute-points", type=int, default=2_000, help="pings timed for brute force (default %(default)s)")
    ap.add_argument("--pg-points", type=int, default=3_000, help="pings timed for PostGIS (default %(default)s)")
    ap.add_argument("--acc", default="mix", help="accuracy: 'mix' (per-technology mix) or metres (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timed runs (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-postgis", action="store_true", help="skip PostGIS")
    ap.add_argument("--compare-git", metavar="REV", default=None,
                    help="also time FenceIndex.classify of geometry/fences.py at git revision REV "
                         "(before/after, same run)")
    ap.add_argument("--json", default=None, help="output file (default benchmarks/results/matcher.json)")
    args = ap.parse_args(argv)
    if args.acc != "mix":
        args.acc = float(args.acc)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    out = {"benchmark": "matcher", "machine": machine(), "args": dict(vars(args)), "results": []}
    if args.compare_git:
        args.old_module = load_git_fences(args.compare_git)

    pg_ctx = None
    if not args.no_postgis:
        from benchmarks._postgis import Cluster, PostgisUnavailable

        try:
            pg_ctx = Cluster().__enter__()
            out["postgis_version"] = pg_ctx.version()
        except PostgisUnavailable as exc:
            print(f"PostGIS skipped: {exc}", file=sys.stderr)
            out["postgis_skipped"] = str(exc)
            pg_ctx = None
    try:
        for n in sizes:
            r = bench_size(n, args, pg_ctx)
            out["results"].append(r)
            print(f"  {n} fences done", file=sys.stderr)
    finally:
        if pg_ctx is not None:
            pg_ctx.__exit__()

    rows = [[r["fences"], r["build_s"] * 1000, r["index_mb"], r["pairs_per_ping"], r["ours_hits_pps"], r["ours_match_pps"],
             r["ours_one_us"], r["strtree_pps"], r["brute_pps"], r.get("postgis_pps"), r.get("hits_vs_postgis"),
             r.get("match_vs_postgis"), r.get("hits_vs_brute"), r["agree_brute"], r.get("agree_postgis")]
            for r in out["results"]]
    print(table(["fences", "build ms", "index MB", "hits/ping", "ours hits pts/s", "ours Match pts/s", "one ping µs",
                 "STRtree centre pts/s", "brute pts/s", "PostGIS pts/s", "hits ÷ PostGIS", "Match ÷ PostGIS",
                 "hits ÷ brute", "agree brute", "agree PostGIS"], rows))
    if args.compare_git:
        print(f"\nbefore/after ({args.compare_git}): " + ", ".join(
            f"{r['fences']} fences: Match {r['old_match_pps']:,.0f} -> {r['ours_match_pps']:,.0f} pts/s "
            f"(x{r['match_vs_old']:.2f})" for r in out["results"]))
    p = write_json("matcher.json", out, args.json)
    print(f"\nwritten {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

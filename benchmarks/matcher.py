"""Matcher benchmark: our FenceIndex against what a user would build instead.

On the same synthetic fences and pings (see benchmarks/_synth.py: aisles,
sections with holes, L-shapes, rotated aisles, circles; a per-technology
accuracy mix) it measures, per fence count:

* ``ours_hits``   — FenceIndex.classify_hits: the whole batch, full answer
  (inside / straddle / centre-in for the accuracy disc), CSR arrays;
* ``ours_match``  — FenceIndex.classify: the same, as one Match per ping;
* ``strtree``     — shapely STRtree.query(points, predicate="within"),
  batched, centre only (the "batched shapely" limit);
* ``strtree_dwithin`` — the R-tree baseline with the full answer: shapely
  STRtree.query(points, predicate="dwithin", distance=acc) per floor, then
  the exact check of every (ping, fence) pair (contains_xy and the distance
  to the prepared boundary, vectorised over the pairs);
* ``rtree``       — the same with the ``rtree`` package (libspatialindex):
  one index per floor, bulk-loaded from numpy, ``intersection_v`` of the
  accuracy boxes, then the same exact check;
* ``brute``       — shapely brute force, per ping: contains_xy of the ping
  against every prepared fence of its floor (vectorised over the fences),
  centre only;
* ``postgis``     — PostgreSQL + PostGIS, fences in a table with a GiST
  index, one ``ST_Contains`` query per ping over a local socket (prepared
  statement), centre only.

``strtree``, ``brute`` and ``postgis`` answer less than we do (centre only,
no accuracy disc); ours is still checked against brute force and PostGIS on
the sampled pings.  The two R-tree baselines give the full answer (the same
CSR codes as ``ours_hits``), and agreement with ours is measured per ping.

    python benchmarks/matcher.py                      # 500, 5,000, 50,000 fences
    python benchmarks/matcher.py --sizes 5000 --points 100000 --no-postgis
    python benchmarks/matcher.py --sizes 2000,10000 --no-postgis   # grid vs R-trees
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
from geometry.fences import CENTRE_IN, INSIDE, STRADDLE, FenceIndex  # noqa: E402


def _centre_sets_ours(hits, rows) -> list[set[int]]:
    out = []
    for r in rows:
        s, e = hits.indptr[r], hits.indptr[r + 1]
        f, c = hits.fence[s:e], hits.code[s:e]
        out.append(set(f[(c & CENTRE_IN) != 0].tolist()))
    return out


def _exact_codes(geoms, bounds, pi, fj, x, y, acc) -> np.ndarray:
    """Code bits of candidate pairs (ping ``pi``, fence ``fj``) as FenceIndex
    defines them; 0 where the disc does not reach the fence."""
    contains = shapely.contains_xy(geoms[fj], x[pi], y[pi])
    dist = shapely.distance(bounds[fj], shapely.points(x[pi], y[pi]))
    a = acc[pi]
    inside = contains & (dist >= a)
    straddle = ~inside & (contains | (dist < a))
    return (inside * INSIDE | straddle * STRADDLE | contains * CENTRE_IN).astype(np.int8)


def _pair_keys(pi, fj, code, n_fences: int) -> np.ndarray:
    keep = code != 0
    return (pi[keep].astype(np.int64) * n_fences + fj[keep]) * 8 + code[keep]


def _agreement(ours_keys: np.ndarray, keys: np.ndarray, n_fences: int, n: int) -> float:
    """Share of pings whose (fence, code) pairs are identical in both answers."""
    diff = np.setxor1d(ours_keys, keys, assume_unique=True)
    return 1.0 - np.unique(diff // 8 // n_fences).size / n


def rtree_baselines(fences, x, y, fl, acc, hits, args) -> dict:
    """The R-tree alternatives to our grid, with the same full answer:
    shapely STRtree ``dwithin`` and the ``rtree`` package's ``intersection_v``,
    one tree per floor, each followed by the exact check of its pairs."""
    import rtree

    n = min(args.tree_points, x.size)
    x, y, fl, acc = x[:n], y[:n], fl[:n], acc[:n]
    nf = len(fences)
    geoms = np.array([f.geometry for f in fences], dtype=object)
    bounds = shapely.boundary(geoms)
    shapely.prepare(geoms)
    shapely.prepare(bounds)
    floors = np.array([f.floor for f in fences])
    by_floor = {int(f): np.flatnonzero(floors == f) for f in np.unique(floors)}
    sel = {f: np.flatnonzero(fl == f) for f in by_floor}
    res: dict = {"tree_points": n}

    t0 = time.perf_counter()
    strtrees = {f: shapely.STRtree(geoms[i]) for f, i in by_floor.items()}
    res["strtree_build_s"] = time.perf_counter() - t0
    pts = shapely.points(x, y)

    def strtree_query():
        pis, fjs = [], []
        for f, tree in strtrees.items():
            s = sel[f]
            q, t = tree.query(pts[s], predicate="dwithin", distance=acc[s])
            pis.append(s[q])
            fjs.append(by_floor[f][t])
        return np.concatenate(pis), np.concatenate(fjs)

    env = shapely.bounds(geoms)
    t0 = time.perf_counter()
    rtrees = {}
    for f, i in by_floor.items():
        p = rtree.index.Property()
        p.dimension = 2
        rtrees[f] = rtree.index.Index((i.astype(np.int64), env[i, :2].copy(), env[i, 2:].copy()), properties=p)
    res["rtree_build_s"] = time.perf_counter() - t0

    def rtree_query():
        pis, fjs = [], []
        for f, tree in rtrees.items():
            s = sel[f]
            a = acc[s]
            mins = np.column_stack([x[s] - a, y[s] - a])
            maxs = np.column_stack([x[s] + a, y[s] + a])
            ids, counts = tree.intersection_v(mins, maxs)
            pis.append(np.repeat(s, counts.astype(np.int64)))
            fjs.append(ids.astype(np.int64))
        return np.concatenate(pis), np.concatenate(fjs)

    o_pi = np.repeat(np.arange(n), np.diff(hits.indptr[: n + 1]))
    ours_keys = np.sort(_pair_keys(o_pi, hits.fence[: o_pi.size], hits.code[: o_pi.size], nf))
    for name, query in (("strtree_dwithin", strtree_query), ("rtree", rtree_query)):
        def full(query=query):
            pi, fj = query()
            return pi, fj, _exact_codes(geoms, bounds, pi, fj, x, y, acc)

        pi, fj, code = full()
        res[f"{name}_pairs_per_ping"] = pi.size / n  # candidates before the exact check
        res[f"agree_{name}"] = _agreement(ours_keys, np.sort(_pair_keys(pi, fj, code, nf)), nf, n)
        res[f"{name}_query_pps"] = n / best_of(query, args.repeat)  # candidates only
        res[f"{name}_s"] = best_of(full, args.repeat)
        res[f"{name}_pps"] = n / res[f"{name}_s"]
    return res


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

    if not args.no_rtree:
        res.update(rtree_baselines(fences, x, y, fl, acc, hits, args))
    if pg is not None:
        res.update(bench_postgis(pg, fences, x, y, fl, hits, args))
    for k in ("brute", "strtree", "postgis", "strtree_dwithin", "rtree"):
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
    ap.add_argument("--tree-points", type=int, default=50_000, help="pings timed for the R-tree baselines "
                    "(STRtree dwithin, rtree intersection_v; default %(default)s)")
    ap.add_argument("--no-rtree", action="store_true", help="skip the R-tree baselines")
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
    if not args.no_rtree:
        rows = [[r["fences"], r["ours_hits_pps"], r["strtree_dwithin_pps"], r["rtree_pps"],
                 r["hits_vs_strtree_dwithin"], r["hits_vs_rtree"], r["strtree_dwithin_query_pps"],
                 r["rtree_query_pps"], r["strtree_dwithin_pairs_per_ping"], r["rtree_pairs_per_ping"],
                 r["pairs_per_ping"], f"{r['agree_strtree_dwithin']:.2%}", f"{r['agree_rtree']:.2%}"]
                for r in out["results"]]
        print("\nFull answer (inside / straddle / centre-in): our grid vs R-trees, then the exact check")
        print(table(["fences", "grid hits pts/s", "STRtree dwithin pts/s", "rtree pts/s", "grid ÷ STRtree",
                     "grid ÷ rtree", "STRtree query only pts/s", "rtree query only pts/s", "STRtree cand/ping",
                     "rtree cand/ping", "hits/ping", "agree STRtree", "agree rtree"], rows))
    if args.compare_git:
        print(f"\nbefore/after ({args.compare_git}): " + ", ".join(
            f"{r['fences']} fences: Match {r['old_match_pps']:,.0f} -> {r['ours_match_pps']:,.0f} pts/s "
            f"(x{r['match_vs_old']:.2f})" for r in out["results"]))
    p = write_json("matcher.json", out, args.json)
    print(f"\nwritten {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

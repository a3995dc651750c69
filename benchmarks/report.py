"""The campaign report over a large ledger: ``edge_agent.storage.report.build_report``.

A real ledger file (the agent's tables and migrations) is filled with
``--audit`` audit rows (decisions over 40 promotions with a realistic mix of
reasons), ``--offers`` offers with their treated exposures (4 promotions with
A/B variants), half as many control exposures (holdouts and the global
control group), codes on 30 % of the offers, redemptions of a third of
those, and purchases attributed to 20 % of the people.  The figure is the
wall time of one report (best of ``--repeat``), over the whole history and
over its second half (``since``), on a cold connection each time.

    python benchmarks/report.py
    python benchmarks/report.py --audit 1000000 --offers 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import RESULTS, machine, table, write_json  # noqa: E402

REASONS = ["outranked"] * 30 + ["cooldown"] * 30 + ["segment"] * 15 + ["outside_window"] * 10 + \
    ["cap"] * 5 + ["holdout"] * 4 + ["budget"] * 3 + ["paused"] * 2 + ["no_consent"]
T0 = 1_780_000_000.0
SPAN = 30 * 86400.0


def fill(path: Path, n_audit: int, n_offers: int, seed: int = 1) -> dict:
    from edge_agent.storage.ledger import Ledger
    from edge_agent.storage.store import Store

    rng = random.Random(seed)
    led = Ledger(path, store_id="S042")
    Store(led)  # creates the campaign tables
    c = led.conn
    people = [f"p_{i:026d}" for i in range(max(1, n_offers // 2))]
    promos = [f"promo-{i}" for i in range(40)]
    t = time.perf_counter()
    c.execute("BEGIN")
    batch = []
    for i in range(n_audit):
        ts = T0 + SPAN * i / n_audit
        offered = i % 10 == 0
        batch.append((ts, rng.choice(people).replace("p_", "d_"), "enter", None, rng.choice(promos),
                      "offered" if offered else "suppressed", "offered" if offered else rng.choice(REASONS), None))
        if len(batch) == 50_000:
            c.executemany("INSERT INTO audit(ts, device, event, zone, promotion_id, outcome, reason, offer_id) "
                          "VALUES (?,?,?,?,?,?,?,?)", batch)
            batch.clear()
    if batch:
        c.executemany("INSERT INTO audit(ts, device, event, zone, promotion_id, outcome, reason, offer_id) "
                      "VALUES (?,?,?,?,?,?,?,?)", batch)
    offers, exposures, redemptions = [], [], []
    for i in range(n_offers):
        ts = T0 + SPAN * i / n_offers
        person = people[i % len(people)]
        promo = f"promo-{i % 4}"
        variant = "AB"[(i // 4) % 2]
        oid = f"o_{i:016x}"
        code = f"C{i:09d}" if i % 10 < 3 else None
        payload = json.dumps({"offer_id": oid, "promotion_id": promo, "variant": variant})
        offers.append((oid, person.replace("p_", "d_"), promo, None, ts, ts + 900, payload, 1, code,
                       "apply" if code else None, ts + 60 if code else None))
        exposures.append((ts, person, person.replace("p_", "d_"), promo, variant, "treated", "offered", oid,
                          int(code is not None)))
        if code and i % 3 == 0:
            redemptions.append((oid, ts + 600, person, person.replace("p_", "d_"), promo, variant, "T1", 20.0,
                                "EUR", None, "{}", ts))
    for i in range(n_offers // 2):
        ts = T0 + SPAN * i / (n_offers // 2)
        person = f"q_{i:026d}"
        exposures.append((ts, person, person, f"promo-{i % 4}", "AB"[(i // 4) % 2], "control",
                          "holdout" if i % 3 else "global_holdout", None, 0))
    c.executemany("INSERT INTO offers(offer_id, device, promotion_id, zone, ts, expires, payload, delivered, code, "
                  "action, action_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?)", offers)
    c.executemany("INSERT INTO exposures(ts, person, device, promotion_id, variant, arm, reason, offer_id, applied) "
                  "VALUES (?,?,?,?,?,?,?,?,?)", exposures)
    c.executemany("INSERT INTO redemptions(offer_id, ts, person, device, promotion_id, variant, till, basket_total, "
                  "currency, idempotency_key, response, offer_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", redemptions)
    attributions = []
    rows = c.execute("SELECT id, ts, person, promotion_id, variant, arm FROM exposures").fetchall()
    for pid, (eid, ts, person, promo, variant, arm) in enumerate(rows):
        if rng.random() < (0.25 if arm == "treated" else 0.12):
            c.execute("INSERT INTO purchases(ts, person, basket_total, currency, skus) VALUES (?,?,?,?,?)",
                      (ts + 900, person, 30.0, "EUR", '["x"]'))
            attributions.append((pid, eid, ts, person, promo, variant, arm))
    c.executemany("INSERT INTO attributions(purchase_id, exposure_id, exposure_ts, person, promotion_id, variant, "
                  "arm) VALUES (?,?,?,?,?,?,?)", attributions)
    c.execute("COMMIT")
    fill_s = time.perf_counter() - t
    led.close()
    return {"audit": n_audit, "offers": n_offers, "exposures": len(exposures), "redemptions": len(redemptions),
            "attributions": len(attributions), "fill_s": fill_s,
            "file_mb": round(path.stat().st_size / 2**20, 1)}


def time_report(path: Path, since: float | None, repeat: int) -> tuple[float, dict]:
    from edge_agent.storage.report import build_report

    best, rep = float("inf"), {}
    for _ in range(repeat):
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        t = time.perf_counter()
        rep = build_report(conn, since=since, until=T0 + SPAN + 1, tz=ZoneInfo("Europe/Prague"))
        best = min(best, time.perf_counter() - t)
        conn.close()
    return best, rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--audit", type=int, default=1_000_000, help="audit rows (default %(default)s)")
    ap.add_argument("--offers", type=int, default=100_000, help="offers (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N reports (default %(default)s)")
    ap.add_argument("--json", default=None, help="output file (default benchmarks/results/report.json)")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="report-", dir=RESULTS))
    out = {"benchmark": "report", "machine": machine(), "args": vars(args), "results": []}
    try:
        path = tmp / "edge.sqlite3"
        out["data"] = fill(path, args.audit, args.offers)
        for label, since in (("whole history", None), ("second half (since)", T0 + SPAN / 2)):
            s, rep = time_report(path, since, args.repeat)
            cells = sum(len(p["variants"]) for p in rep["promotions"].values())
            out["results"].append({"period": label, "seconds": s, "promotions": len(rep["promotions"]),
                                   "variant_rows": cells})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    d = out["data"]
    print(f"ledger: {d['audit']:,} audit rows, {d['offers']:,} offers, {d['exposures']:,} exposures, "
          f"{d['redemptions']:,} redemptions, {d['attributions']:,} attributions; {d['file_mb']} MB "
          f"(filled in {d['fill_s']:.1f} s)")
    print(table(["period", "report (s)", "promotions", "variant rows", "< 2 s"],
                [[r["period"], r["seconds"], r["promotions"], r["variant_rows"],
                  "yes" if r["seconds"] < 2 else "no"] for r in out["results"]]))
    print(f"\nwritten {write_json('report.json', out, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

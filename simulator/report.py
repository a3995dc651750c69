"""``report.json`` and ``report.md``: per-zone scores, lint, advice, latency.

Deterministic for a given store, seed and technology (same seed → same
bytes): everything except ``latency_ms`` and ``timing``, which are
wall-clock measurements (``nondeterministic`` in the report lists them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from store_config.lint import measured_verdict, needed_across, predictions, tech_accuracy

__all__ = ["build_report", "write_report", "NONDETERMINISTIC", "lint_flagged", "advice", "compare", "verdicts"]

NONDETERMINISTIC = ("latency_ms", "timing")
LATENCY_BUDGET_MS = 200.0


def lint_flagged(cfg, tech: str) -> list[str]:
    """Fence ids lint predicts will not work with ``tech`` (``marginal`` or ``fails``)."""
    return sorted(fid for fid, p in predictions(cfg, tech).items() if p.verdict != "works")


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _said(p) -> str:
    """Lint's prediction in its own words."""
    if p.at_once:
        return "works (at once)"
    if p.floored and p.dwell_s is None:
        return "fails (repeated fixes never place a shopper here)"
    if p.floored:
        return f"{p.verdict} (only near the middle, ~{_fmt(p.dwell_s)} s of dwell)"
    if p.dwell_s is None:
        return "fails (a single fix never fits and fusion is off)"
    return f"{p.verdict} (~{_fmt(p.dwell_s)} s of dwell)"


def verdicts(cfg, zones: dict, tech: str) -> dict[str, dict]:
    """Per zone: lint's ``predicted`` verdict, the ``measured`` one (from
    recall; None without visits) and the ``verdict`` (measured when there is
    one, else predicted), in the words of :mod:`store_config.lint`."""
    preds = predictions(cfg, tech)
    out = {}
    for zid, z in zones.items():
        p = preds.get(zid)
        if p is None:
            continue
        measured = measured_verdict(z.get("recall"))
        out[zid] = {"predicted": p.verdict, "measured": measured, "verdict": measured or p.verdict}
    return out


def advice(cfg, zones: dict, tech: str) -> list[dict]:
    """What to change, zone by zone (deterministic).  Its verdicts are
    :func:`verdicts`' (so they agree with the measured recall), its sizes
    :func:`store_config.lint.needed_across`'s (so they agree with lint)."""
    out = []
    acc = tech_accuracy(cfg, tech)
    need = needed_across(cfg, tech)
    preds = predictions(cfg, tech)
    others = {t: predictions(cfg, t) for t in ("uwb", "ble", "wifi") if tech_accuracy(cfg, t) < acc}
    verdict_of = verdicts(cfg, zones, tech)
    for zid, z in zones.items():
        fence = cfg.fence(zid)
        if fence is None or fence.kind == "staff_only" or zid not in preds:
            continue
        p, v = preds[zid], verdict_of[zid]
        across = 2 * p.r
        fits = [t for t, ps in others.items() if ps[zid].verdict == "works"]
        alt = f", or position with {'/'.join(fits)}" if fits else ""
        recall, precision = z["recall"], z["precision"]
        seen = ("no visits to score" if recall is None
                else f"recall {recall:.0%} over {z['visits']} visits")
        agree = (f"as lint predicted: {_said(p)}" if v["predicted"] == v["verdict"]
                 else f"lint predicted {_said(p)}")
        if v["verdict"] != "works":
            fix = (f"enlarge it to at least {_fmt(need)} m across (now {_fmt(across)} m){alt}" if across < need
                   else f"its size suits {tech}, so noise, dropouts or short stays: widen it{alt or ', or use a more precise technology'}")
            out.append({"zone": zid, "verdict": v["verdict"], "text": (
                f"{zid} {v['verdict']} with {tech} ({seen}; {agree}): {fix}")})
        elif v["predicted"] != "works":
            out.append({"zone": zid, "verdict": "works", "text": (
                f"{zid} works with {tech} in this run ({seen}) although lint predicted {_said(p)}: the simulated "
                f"shoppers stayed long enough; real ones may not (at least {_fmt(need)} m across, now "
                f"{_fmt(across)} m, to count on it{alt})")})
        if precision is not None and precision < 0.8:
            out.append({"zone": zid, "verdict": "false entries", "text": (
                f"{zid} had {z['false_enters']} false entries of {z['enters']} (precision {precision:.0%}): "
                f"shoppers outside it were placed inside; keep it away from busy neighbouring areas or use a "
                f"more precise technology")})
        d = z["detection_delay_s"]
        if d is not None and d > 5.0:
            out.append({"zone": zid, "verdict": "slow", "text": (
                f"entries into {zid} come {_fmt(d)} s after the shopper does (median): an enter offer arrives "
                f"late; prefer a dwell trigger or a faster update rate")})
        if z["visits"] == 0 and z["grazes"] == 0:
            out.append({"zone": zid, "verdict": "unvisited", "text": (
                f"no simulated shopper visited {zid}: run more --shoppers or a longer --duration to score it")})
    return out


_SCORES = ("visits", "recall", "precision", "detection_delay_s", "enters", "false_enters", "stays", "recall_stays")
TRACKERS = ("single_fix", "fused")


def compare(runs: dict[str, dict]) -> dict:
    """Two runs' zones side by side: ``runs`` maps each tracker
    (:data:`TRACKERS`) to its ``zones``.  ``worse`` lists the zones whose
    recall or precision under the fused tracker is below the single-fix rule's."""
    single, fused = runs["single_fix"], runs["fused"]
    zones, worse = {}, []
    for zid in sorted(set(single) | set(fused)):
        s, f = single.get(zid, {}), fused.get(zid, {})
        zones[zid] = {"kind": (f or s).get("kind"),
                      "single_fix": {k: s.get(k) for k in _SCORES}, "fused": {k: f.get(k) for k in _SCORES}}
        drops = [k for k in ("recall", "precision")
                 if s.get(k) is not None and f.get(k) is not None and f[k] < s[k] - 1e-9]
        if drops:
            worse.append({"zone": zid, "scores": drops})
    return {"trackers": list(TRACKERS), "zones": zones, "worse": worse}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.quantile(np.array(values), q)), 3)


def build_report(*, cfg, tech: str, seed: int, shoppers: int, duration: float, mac_randomisation: bool,
                 mode: str, zones: dict, problems, samples, collected, latencies_ms: list[float],
                 visits, sim_start: str, device_count: int, broker: str = "external",
                 tracker: str = "fused", baseline: dict | None = None, misses=(), false_entries=(),
                 floor: dict | None = None) -> dict:
    flagged = lint_flagged(cfg, tech)
    verdict_of = verdicts(cfg, zones, tech)
    zones = {zid: {**z, **verdict_of.get(zid, {})} for zid, z in zones.items()}
    real = sum(z["visits"] for z in zones.values())
    offers = len(collected.offers)
    dl = dict(sorted(collected.deadletters.items()))
    return {
        "store": cfg.store_id,
        "tech": tech,
        "seed": seed,
        "shoppers": shoppers,
        "duration_s": duration,
        "mac_randomisation": mac_randomisation,
        "mode": mode,
        "broker": broker,
        "tracker": tracker,
        "scenario": "crowd" if floor is not None else "shoppers",
        "zones": zones,
        "totals": {
            "true_visits": real,
            "grazes": sum(z["grazes"] for z in zones.values()),
            "samples": len(samples),
            "pings": sum(1 for s in samples if s.payload is not None),
            "dropped": sum(1 for s in samples if s.payload is None),
            "devices": device_count,
            "enters": sum(z["enters"] for z in zones.values()),
            "offers": offers,
            "offers_per_visit": round(offers / real, 4) if real else None,
            "deadletters": dl,
        },
        "lint": [str(p) for p in problems],
        "lint_flagged": flagged,
        "advice": advice(cfg, zones, tech),
        "mistakes": {
            "misses": [{"shopper": sh, "zone": z, "start": round(a, 3), "end": round(b, 3)}
                       for sh, z, a, b in misses],
            "false_entries": [{"shopper": sh, "zone": z, "ts": round(t, 3)} for sh, z, t in false_entries],
        },
        **({"compare": compare({tracker: zones, baseline["tracker"]: baseline["zones"]})}
           if baseline is not None else {}),
        **({"floor": floor} if floor is not None else {}),
        "latency_ms": {
            "p50": _pct(latencies_ms, 0.5),
            "p99": _pct(latencies_ms, 0.99),
            "max": _pct(latencies_ms, 1.0),
            "n": len(latencies_ms),
            "budget_ms": LATENCY_BUDGET_MS,
        },
        "timing": {
            "sim_start": sim_start,
            "wall_s": round(collected.wall_s, 3),
            "pings_per_s": round(collected.published / collected.wall_s, 1) if collected.wall_s else None,
        },
        # the floor section's alert times and agent-side peaks are wall-clock bound
        "nondeterministic": list(NONDETERMINISTIC) + (["floor"] if floor is not None else []),
    }


def deterministic_part(report: dict) -> dict:
    """The report without its wall-clock sections (what two runs with one seed share)."""
    skip = set(NONDETERMINISTIC) | set(report.get("nondeterministic", ()))
    return {k: v for k, v in report.items() if k not in skip}


def _cell(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:.0f} %"
    return _fmt(v) if isinstance(v, float) else str(v)


_TRACKER_NAME = {"fused": "the fused tracker ([tracking] fusion = true)",
                 "single_fix": "the single-fix rule ([tracking] fusion = false)"}
_BROKER_NAME = {"mosquitto": "Mosquitto (started for this run; production's broker)",
                "amqtt": "the embedded amqtt (Mosquitto was not found; expect higher latency than production)",
                "external": "the one given (`--broker` / `--attach`)"}


def _arrow(a, b, pct: bool) -> str:
    return f"{_cell(a, pct)} → {_cell(b, pct)}"


def _compare_md(c: dict) -> list[str]:
    lines = ["", "## Single-fix rule → fused tracker (same shoppers, same fixes)", "",
             "| zone | kind | visits | recall | recall (stays) | precision | delay p50 (s) | false enters |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    worse = {w["zone"] for w in c["worse"]}
    for zid, z in c["zones"].items():
        s, f = z["single_fix"], z["fused"]
        mark = " ▼" if zid in worse else ""
        lines.append(f"| {zid}{mark} | {z['kind']} | {_cell(f['visits'])} | {_arrow(s['recall'], f['recall'], True)} | "
                     f"{_arrow(s['recall_stays'], f['recall_stays'], True)} | "
                     f"{_arrow(s['precision'], f['precision'], True)} | "
                     f"{_arrow(s['detection_delay_s'], f['detection_delay_s'], False)} | "
                     f"{_arrow(s['false_enters'], f['false_enters'], False)} |")
    lines += ["", "▼ = worse with the fused tracker (recall or precision below the single-fix rule's)."
              if worse else "No zone is worse with the fused tracker than with the single-fix rule."]
    return lines


def _secs(v) -> str:
    return "–" if v is None else f"{v:.0f} s"


def _floor_md(fl: dict) -> list[str]:
    rush = fl["rush"]
    lines = ["", "## The floor in a rush at the tills (`--crowd`)", "",
             f"{rush['shoppers']} shoppers walked in within {_fmt(rush['walk_in_s'])} s and converged on the "
             f"checkouts ({rush['tills_per_checkout']} tills per checkout fence, "
             f"{_fmt(rush['service_s'][0])}–{_fmt(rush['service_s'][1])} s each); the rush began at "
             f"{_secs(rush['start_s'])} (the first shopper at a till) and the last reached the tills at "
             f"{_secs(rush['end_s'])}. Times are simulated seconds from the start of the run; *true* comes "
             "from the shoppers' true positions, *seen* from the retained `{R}/floor` and `{R}/alert/#`, as "
             f"a client sees them. Alert times are good to about {_fmt(fl['resolution_s'])} s (the agent "
             f"decides once a wall-clock second; this run replayed at {_fmt(fl['speed'])}× real time).", "",
             "| zone | kind | capacity | peak (true) | at | peak (seen) | over capacity | crowding due | "
             "crowding alert | after rush | after due |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for zid, z in fl["zones"].items():
        cr = z.get("crowding") or {}
        cap = z.get("capacity")
        lines.append(f"| {zid} | {z['kind']} | {_cell(cap)} | {z['peak_true']} | {_secs(z['peak_true_at_s'])} | "
                     f"{_cell(z['peak_seen'])} | {_secs(z.get('over_capacity_s')) if cap else '–'} | "
                     f"{_secs(cr.get('due_s'))} | {_secs(cr.get('fired_s'))} | {_secs(cr.get('after_rush_s'))} | "
                     f"{_secs(cr.get('after_due_s'))} |")
    queues = {zid: z for zid, z in fl["zones"].items() if "queue" in z}
    if queues:
        lines += ["", "| checkout | queue_alert_at | queue_wait_s | most waiting (true) | longest stay | "
                      "queue due | queue alert | after rush | after due | resolved |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for zid, z in queues.items():
            q = z["queue"]
            lines.append(f"| {zid} | {z['queue_alert_at']} | {_fmt(z['queue_wait_s'])} | {z['peak_waiting']} | "
                         f"{_secs(z['longest_stay_s'])} | {_secs(q['due_s'])} | {_secs(q['fired_s'])} | "
                         f"{_secs(q['after_rush_s'])} | {_secs(q['after_due_s'])} | {_secs(q['resolved_s'])} |")
    lines += ["", "*due*: when the truth met the rule (crowding: at or over capacity for "
              f"{_fmt(fl['sustain_s'])} s; queue: `queue_alert_at` shoppers each inside longer than "
              "`queue_wait_s`); *after rush* / *after due*: the first alert's delay from the rush's start / "
              "from when it was due.", ""]
    lines += [f"- **{a['zone']}** ({a['verdict']}): {a['text']}" for a in fl["advice"]] or ["- Nothing to change."]
    return lines


def markdown(report: dict) -> str:
    r = report
    lines = [
        f"# Simulation report: store {r['store']}, {r['tech']}",
        "",
        f"{r['shoppers']} shoppers over {_fmt(r['duration_s'])} simulated seconds, seed {r['seed']}"
        f"{', MAC randomisation' if r['mac_randomisation'] else ''} ({r['mode']} run). "
        f"{r['totals']['pings']} pings sent ({r['totals']['dropped']} dropped by the sensor model), "
        f"{r['totals']['true_visits']} true visits, {r['totals']['offers']} offers. "
        f"Tracker: {_TRACKER_NAME.get(r.get('tracker'), r.get('tracker'))}.",
        "",
        "## Zones",
        "",
        "| zone | kind | verdict | lint said | visits | grazes | recall | precision | delay p50 (s) | stays | "
        "recall (stays) | enters | false | offers/visit |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for zid, z in r["zones"].items():
        flag = " ⚠" if zid in r["lint_flagged"] else ""
        lines.append(f"| {zid}{flag} | {z['kind']} | {z.get('verdict', '–')} | {z.get('predicted', '–')} | "
                     f"{z['visits']} | {z['grazes']} | {_cell(z['recall'], True)} | "
                     f"{_cell(z['precision'], True)} | {_cell(z['detection_delay_s'])} | {z['stays']} | "
                     f"{_cell(z['recall_stays'], True)} | {z['enters']} | "
                     f"{z['false_enters']} | {_cell(z['offers_per_visit'])} |")
    lat = r["latency_ms"]
    lines += ["", "*verdict*: works (recall ≥ 80 %), marginal (≥ 50 %), fails (below), from this run's recall; "
              "without visits, lint's prediction (*lint said*, from `edge-agent check --tech`). "
              "⚠ = lint said before the run that it is marginal or fails with this technology."]
    if "floor" in r:
        lines += _floor_md(r["floor"])
    if "compare" in r:
        lines += _compare_md(r["compare"])
    lines += ["", "## Ping → offer latency (wall clock)", "",
              f"Broker: {_BROKER_NAME.get(r.get('broker'), r.get('broker'))}.", ""]
    if lat["n"]:
        ok = lat["p99"] <= lat["budget_ms"]
        lines.append(f"p50 {_cell(lat['p50'])} ms, p99 {_cell(lat['p99'])} ms, max {_cell(lat['max'])} ms over "
                     f"{lat['n']} offers — {'within' if ok else 'OVER'} the {_fmt(lat['budget_ms'])} ms budget.")
        rate = r["timing"].get("pings_per_s")
        if rate:
            lines.append(f"Measured while the simulator pushed {rate:.0f} pings/s (`--speed 0` pushes as fast as "
                         "the agent takes them, so this is latency under that load; `--speed` paces the replay).")
    else:
        lines.append("No offer was caused by a ping in this run.")
    lines += ["", "## Advice", ""]
    lines += [f"- **{a['zone']}** ({a['verdict']}): {a['text']}" for a in r["advice"]] or ["- Nothing to change."]
    lines += ["", "## Lint (before the run)", ""]
    lines += [f"- {w}" for w in r["lint"]] or ["- No warnings."]
    lines += ["", "## How to read this", "",
              "- *visits*: runs of sensor samples whose true position is inside the fence; *grazes* never went "
              "0.25 m deep and are not scored.",
              "- *recall*: share of visits during which the agent had the shopper in the zone; *precision*: "
              "share of the agent's entries that overlap a true visit; `–` when the zone had no visits.",
              "- *delay*: median seconds from the true entry to the agent's `enter`.",
              "- *stays*: visits of at least 10 s (browsing); *recall (stays)* is recall over those alone — a "
              "walk across the end of an aisle lasts a second or two, and only UWB-grade fixes see it.",
              f"- Wall-clock fields (`{'`, `'.join(r['nondeterministic'])}`) differ between runs; everything else "
              "is the same for the same seed.",
              "", "![map](map.png)", ""]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(report))

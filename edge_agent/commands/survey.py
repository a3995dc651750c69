"""``edge-agent survey fit`` and ``survey report``: the store's BLE radio from labelled walks.

The method lives in ``geometry.radio`` (the model and its fit) and
``geometry.survey`` (the line format and the report); this module reads the
files, writes the model and prints.  Exit 1 with one clear line on a bad
survey line (file:line), a beacon not in the layout, or too few scans.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

MIN_SCANS = 30


def _fail(msg: str) -> int:
    print(f"edge-agent survey: {msg}", file=sys.stderr)
    return 1


def _load(args, *, with_model: bool = True):
    """(cfg, scans) or raises SystemExit-worthy messages as ValueError.
    ``with_model=False`` (fit): the model file in place, which fit replaces,
    is not read, so a stale or broken one does not stop its own refit."""
    from geometry.frames import LocalFrame
    from geometry.survey import parse
    from store_config import ConfigError, load_store

    try:
        cfg = load_store(args.config, ble_model=with_model)
    except ConfigError as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else "invalid configuration") from None
    frame = LocalFrame(cfg.anchor.lat, cfg.anchor.lon, cfg.anchor.bearing)
    scans = []
    for f in args.files:
        try:
            data = Path(f).read_bytes()
        except OSError as e:
            raise ValueError(f"{f}: cannot read: {e.strerror or e}") from None
        scans += parse(_lines(data, f), f, frame)
    return cfg, scans


def _lines(data: bytes, f: str) -> list[str]:
    """The file's lines as text; a line that is not UTF-8 is a bad line
    (file:line).  A leading byte-order mark (Notepad's UTF-8) is dropped."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out = []
    for no, raw in enumerate(data.splitlines(), 1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{f}:{no}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                             "save the file as UTF-8") from None
    return out


def _zones(cfg):
    return [(f.id, int(f.floor), f.geometry) for f in cfg.fences if f.kind != "obstacle"]


def _bounds(cfg):
    if cfg.outline is None:
        return None
    x0, y0, x1, y1 = cfg.outline.bounds
    return {int(b.floor): (x0 - 1.0, y0 - 1.0, x1 + 1.0, y1 + 1.0) for b in cfg.beacons}


def _fix_arrays(cfg, scans):
    """Per source: truth ``X, Y, F``, the engine's ``x, y``, the ``acc`` it
    claims (reported, else ``[tracking.default_acc]``) and the walks."""
    out = {}
    for src in sorted({s.source for s in scans}):
        ss = [s for s in scans if s.source == src]
        dacc = cfg.tracking.default_acc  # the Wi-Fi adapters fall back to the wifi default, as they do live
        dflt = float(dacc.get("wifi", 8.0) if src in ("meraki", "aruba") else dacc.get(src, 10.0))
        acc = np.array([dflt if np.isnan(s.fix[3]) else s.fix[3] for s in ss], dtype=float)
        out[src] = (np.array([s.x for s in ss]), np.array([s.y for s in ss]), np.array([s.floor for s in ss]),
                    np.array([s.fix[0] for s in ss]), np.array([s.fix[1] for s in ss]),
                    np.array([s.fix[2] for s in ss]), acc, np.array([s.walk for s in ss]))
    return out


def _fix_report(X, Y, F, x, y, fl, acc, cfg):
    """The report on fixes; a fix on another floor than the truth is no fix of it."""
    from geometry.survey import report

    same = fl == F
    x, y = np.where(same, x, np.nan), np.where(same, y, np.nan)
    rep = report(X, Y, F, x, y, acc, np.ones(X.size, dtype=int), _zones(cfg), confidence=cfg.tracking.confidence)
    rep["by_beacons_heard"] = {}  # not a BLE scan
    return rep


def _fit_fixes(cfg, fix_scans) -> dict:
    """Per source: the ``[tracking.acc_scale]`` factor that makes the claimed
    ``acc`` honest, fitted on all walks, and the report cross-validated by walk
    (each walk's fixes scaled by the factor fitted on the other walks)."""
    from geometry.calibrate import scale_from_survey

    sig = cfg.tracking.acc_sigmas
    out = {}
    for src, (X, Y, F, x, y, fl, acc, walks) in _fix_arrays(cfg, fix_scans).items():
        err = np.where(fl == F, np.hypot(x - X, y - Y), 1e9)  # another floor: never covered
        factor = scale_from_survey(err, acc, acc_sigmas=sig)
        folds = [walks == w for w in sorted(set(walks.tolist()))]
        if len(folds) >= 2 and all((~held).sum() >= 10 for held in folds):
            how = "one walk held out at a time"
        else:
            how = ("one walk only" if len(folds) < 2 else "too few fixes to hold a walk out") + \
                ": thirds held out in turn"
            idx = np.arange(X.size)
            folds = [idx * 3 // X.size == k for k in range(3)]
        cv = np.empty(X.size)
        for held in folds:
            cv[held] = scale_from_survey(err[~held], acc[~held], acc_sigmas=sig)
        now = float(cfg.tracking.acc_scale.get(src, 1.0))
        out[src] = {"fixes": int(X.size), "acc_scale": round(factor, 3), "acc_scale_now": now,
                    "coverage_now": round(float(np.mean(err <= acc * now)), 3), "cross_validated": how,
                    "report": _fix_report(X, Y, F, x, y, fl, acc * cv, cfg)}
    return out


def _print_fixes(fixes: dict, fit: bool) -> None:
    from geometry.survey import format_report

    for src, v in fixes.items():
        print()
        if fit:
            print(f"{src} fixes: {v['fixes']}; the acc they claim (as the agent takes it now, acc_scale "
                  f"{v['acc_scale_now']:g}) covers the truth {100 * v['coverage_now']:.0f} %; to make it honest "
                  f"put in store.toml:\n\n[tracking.acc_scale]\n{src} = {v['acc_scale']:g}\n")
            print(format_report(v["report"], f"Cross-validated with that factor ({v['cross_validated']}):"), end="")
        else:
            print(format_report(v["report"], f"{src} fixes as the agent takes them now (acc_scale "
                                             f"{v['acc_scale_now']:g}):"), end="")


def model_path(cfg) -> Path:
    """Where the store's BLE model lives: ``[sources.ble] model`` (relative to
    store.toml) or ``ble-model.json`` beside it."""
    named = (cfg.sources.get("ble") or {}).get("model")
    base = Path(cfg.files["store"]).resolve().parent
    return base / named if named else base / "ble-model.json"


def _fixes_only(args: argparse.Namespace, fixes: dict, headline: str, fitted: bool) -> int:
    """The answer of a survey with Wi-Fi or phone fixes and no BLE scan (no BLE model to fit or judge)."""
    if args.json:
        print(json.dumps({"model": None, "fixes": fixes}, indent=1))
    else:
        print(headline)
        _print_fixes(fixes, fitted)
    return 0


def run_fit(args: argparse.Namespace) -> int:
    from geometry import radio
    from geometry.survey import SurveyError, arrays, format_report, report

    try:
        cfg, scans = _load(args, with_model=False)
        fix_scans = [s for s in scans if s.fix is not None]
        scans = [s for s in scans if s.beacons is not None]
        for src in sorted({s.source for s in fix_scans}):
            n = sum(s.source == src for s in fix_scans)
            if n < MIN_SCANS:
                return _fail(f"too few scans: {n} {src} fixes, at least {MIN_SCANS} needed "
                             "(walk every zone, in two or more walks)")
        fixes = _fit_fixes(cfg, fix_scans) if fix_scans else {}
        if fix_scans and not scans:  # Wi-Fi or phone fixes only: no BLE model to fit
            return _fixes_only(args, fixes, f"{len(fix_scans)} fixes surveyed; no BLE scans, so no BLE model written",
                               True)
        if not cfg.beacons:
            raise ValueError(f"{args.config}: the layout has no BLE beacons (kind \"beacon\" points) to survey")
        ids = [b.beacon_id.lower() for b in cfg.beacons]
        X, Y, F, R, walks, ts = arrays(scans, ids)
    except (SurveyError, ValueError) as e:
        return _fail(str(e))
    heard = (~np.isnan(R)).any(axis=1)
    if heard.sum() < MIN_SCANS:
        return _fail(f"too few scans: {int(heard.sum())} hear a beacon of the layout, at least {MIN_SCANS} needed "
                     "(walk every zone, ~20 scans per zone, in two or more walks)")
    bs = cfg.beacons
    ble = cfg.sources.get("ble", {})
    params = radio.RadioParams(n=ble.get("path_loss_exponent", 2.0), min_acc=ble.get("min_acc", 1.5))
    nwalks = len(set(walks.tolist()))
    model, cv = radio.fit(ids, [b.x for b in bs], [b.y for b in bs], [b.floor for b in bs],
                          [b.tx_power for b in bs], X, Y, F, R, walks, ts, params=params, bounds=_bounds(cfg),
                          meta={"scans": int(len(scans)), "walks": nwalks,
                                "files": [os.path.basename(f) for f in args.files]})
    out = Path(args.out) if args.out else model_path(cfg)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(json.dumps(model.to_dict(), separators=(",", ":")) + "\n", encoding="utf-8")
        os.replace(tmp, out)  # the agent's reload never sees half a file
    except OSError as e:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        return _fail(f"{out}: cannot write the model: {e.strerror or e}")
    rep = report(X, Y, F, cv["x"], cv["y"], cv["acc"], cv["heard"], _zones(cfg), confidence=cfg.tracking.confidence)
    how = "one walk held out at a time" if nwalks >= 2 else "one walk only: thirds of it held out in turn"
    if args.json:
        print(json.dumps({"model": str(out), "cross_validated": how, "report": rep,
                          **({"fixes": fixes} if fixes else {})}, indent=1))
    else:
        print(f"wrote {out} ({len(scans)} scans, {nwalks} walks); the agent loads it at start and on reload")
        print(format_report(rep, f"Cross-validated ({how}):"), end="")
        _print_fixes(fixes, True)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from geometry import radio

    from edge_agent.pipeline.state import ble_model
    from geometry.survey import SurveyError, arrays, format_report, report

    try:
        cfg, scans = _load(args)
        fix_scans = [s for s in scans if s.fix is not None]
        scans = [s for s in scans if s.beacons is not None]
        if not scans and not fix_scans:
            return _fail("too few scans: none")
        fixes = {}
        for src, (X, Y, F, x, y, fl, acc, _) in _fix_arrays(cfg, fix_scans).items():
            now = float(cfg.tracking.acc_scale.get(src, 1.0))
            fixes[src] = {"fixes": int(X.size), "acc_scale_now": now,
                          "report": _fix_report(X, Y, F, x, y, fl, acc * now, cfg)}
        if not scans:
            return _fixes_only(args, fixes, f"{len(fix_scans)} fixes surveyed, no BLE scans", False)
        if not cfg.beacons:
            raise ValueError(f"{args.config}: the layout has no BLE beacons (kind \"beacon\" points) to survey")
        model = ble_model(cfg)
        X, Y, F, R, _, _ = arrays(scans, model.ids)
    except (SurveyError, ValueError) as e:
        return _fail(str(e))
    x, y, _, acc, k = radio.predict(model, F, R)
    rep = report(X, Y, F, x, y, acc, k, _zones(cfg), confidence=cfg.tracking.confidence)
    src = "the fitted model " + str(model_path(cfg)) if cfg.ble_model is not None else "the no-survey defaults"
    if args.json:
        print(json.dumps({"model": src, "report": rep, **({"fixes": fixes} if fixes else {})}, indent=1))
    else:
        print(format_report(rep, f"The model in place ({src}) on {', '.join(args.files)} "
                                 "(scans used in its fit are not held out):"), end="")
        _print_fixes(fixes, False)
    return 0

"""`edge-agent survey fit` / `survey report` end to end, and the survey file format (pure parts)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geometry.survey import SurveyError, arrays, parse
from simulator.sensors import ble_rssi
from store_config import load_store, sample_path


def _survey_walk(cfg, name: str, seed: int, n: int = 160, t0: float = 1764930000.0) -> list[str]:
    """A surveyor's walk over the sample floor: a scan every 2 s at random
    standing points, RSSI from the simulator's real-radio model."""
    rng = np.random.default_rng(seed)
    xs, ys = rng.uniform(1, 39, n), rng.uniform(1, 29, n)
    bs = [b for b in cfg.beacons if b.floor == 0]
    rssi, heard = ble_rssi(xs, ys, bs, rng, seed=7)
    lines = []
    for i in range(n):
        beacons = [{"id": bs[j].beacon_id, "rssi": int(rssi[i, j])} for j in np.flatnonzero(heard[i])]
        lines.append(json.dumps({"walk": name, "ts": t0 + 2 * i, "x": round(float(xs[i]), 2),
                                 "y": round(float(ys[i]), 2), "floor": 0, "beacons": beacons}))
    return lines


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "store"
    shutil.copytree(Path(sample_path()).parent, d)
    cfg = load_store(d / "store.toml")
    for name, seed in (("mon", 1), ("tue", 2), ("wed", 3)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(_survey_walk(cfg, name, seed)) + "\n")
    return d


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edge_agent", "survey", *map(str, args)], capture_output=True,
                          text=True)


def test_fit_writes_the_model_the_agent_loads_and_prints_a_cross_validated_report(store, tmp_path):
    toml = store / "store.toml"
    before = load_store(toml)
    assert before.ble_model is None
    r = _cli("fit", "--config", toml, tmp_path / "mon.jsonl", tmp_path / "tue.jsonl", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    model_file = store / "ble-model.json"
    assert out["model"] == str(model_file) and model_file.exists()
    rep = out["report"]
    assert out["cross_validated"] == "one walk held out at a time"
    assert rep["scans"] == 320 and rep["fixes"] > 300
    assert rep["median_error_m"] < 4.0
    assert abs(rep["coverage"] - 0.865) < 0.08  # calibrated on held-out walks
    assert set(rep["by_beacons_heard"]) <= {"1", "2", "3+"}
    z = rep["zones"]["grocery"]
    assert z["scans"] > 0 and abs(z["right"] + z["wrong"] + z["none"] - 1.0) < 1e-6

    # the agent's config now carries it, and the runtime positions BLE with it
    after = load_store(toml)
    assert after.ble_model is not None and after.ble_model["meta"]["walks"] == 2
    assert after.version != before.version  # a new model is a new config version: reload rebuilds
    assert after.files["ble_model"] == str(model_file)
    from edge_agent.pipeline.state import build_runtime

    rt = build_runtime(after)
    assert rt.ble.meta["scans"] == 320
    fix, unknown, distinct = rt.ble.locate([(after.beacons[0].beacon_id, -60)])
    assert fix is not None and distinct == 1

    # the text report, and `survey report` on a walk the fit never saw
    r = _cli("fit", "--config", toml, tmp_path / "mon.jsonl", tmp_path / "tue.jsonl")
    assert r.returncode == 0 and "Cross-validated (one walk held out at a time)" in r.stdout
    assert "beacons heard | scans | median error | median acc | coverage" in r.stdout
    r = _cli("report", "--config", toml, tmp_path / "wed.jsonl", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["report"]
    assert rep["scans"] == 160 and abs(rep["coverage"] - 0.865) < 0.12


def test_a_named_model_path_is_written_and_loaded_and_a_broken_one_is_a_config_error(store, tmp_path):
    toml = store / "store.toml"
    toml.write_text(toml.read_text().replace("[sources.ble]\n", '[sources.ble]\nmodel = "radio/model.json"\n'))
    (store / "radio").mkdir()
    cfg = load_store(toml)  # not surveyed yet: the defaults, with a warning
    assert cfg.ble_model is None
    assert any("BLE model file not found" in w.message for w in cfg.warnings)
    r = _cli("fit", "--config", toml, tmp_path / "mon.jsonl", tmp_path / "tue.jsonl")
    assert r.returncode == 0, r.stderr
    assert f"wrote {store / 'radio' / 'model.json'}" in r.stdout and not (store / "ble-model.json").exists()
    assert load_store(toml).ble_model is not None
    (store / "radio" / "model.json").write_text("{}")
    with pytest.raises(Exception, match="not an edge-agent BLE model"):
        load_store(toml)


def test_bad_lines_unknown_beacons_and_too_few_scans_exit_1_with_file_and_line(store, tmp_path):
    toml = store / "store.toml"
    good = (tmp_path / "mon.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good[:3] + ['{"walk": "mon", "ts": 1, "x": 1}'] + good[3:]) + "\n")
    r = _cli("fit", "--config", toml, bad)
    assert r.returncode == 1
    assert f"{bad}:4: the true position is missing" in r.stderr or f"{bad}:4: 'x' and 'y'" in r.stderr
    unk = tmp_path / "unk.jsonl"
    unk.write_text("\n".join(good[:5] + ['{"walk": "mon", "ts": 1, "x": 1, "y": 2, "beacons": '
                                         '[{"id": "dead:1:2", "rssi": -70}]}']) + "\n")
    r = _cli("fit", "--config", toml, unk)
    assert r.returncode == 1 and f"{unk}:6: beacon 'dead:1:2' is not in the layout" in r.stderr
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(good[:10]) + "\n")
    r = _cli("fit", "--config", toml, few)
    assert r.returncode == 1 and "too few scans" in r.stderr
    assert not (store / "ble-model.json").exists()


def test_parse_accepts_lat_lon_comments_and_empty_scans():
    from geometry.frames import LocalFrame

    frame = LocalFrame(49.1875, 16.6130, 12.5)
    lines = ["# a comment", "", '{"walk": "w", "ts": 5, "lat": 49.1876, "lon": 16.6131, "beacons": []}',
             '{"walk": "w", "ts": 6, "x": 1, "y": 2, "floor": 1, "beacons": [{"id": "A:1:2", "rssi": -70},'
             ' {"id": "a:1:2", "rssi": -65}]}']
    scans = parse(lines, "s.jsonl", frame)
    assert [s.line for s in scans] == [3, 4]
    assert scans[0].beacons == () and abs(scans[0].y - 11) < 3
    X, Y, F, R, walks, ts = arrays(scans, ["a:1:2"])
    assert R[1, 0] == -65 and np.isnan(R[0, 0]) and F.tolist() == [0, 1]
    for line, msg in (("[1]", "must be a JSON object"), ('{"walk": "", "ts": 1}', "'walk'"),
                      ('{"walk": "w", "ts": "x"}', "'ts'"), ('{"walk": "w", "ts": 1, "x": 1, "y": 1}', "'beacons'"),
                      ('{"walk": "w", "ts": 1, "x": 1, "y": 1, "beacons": [{"id": "a", "rssi": 99}]}',
                       "out of range"), ("{", "not valid JSON")):
        with pytest.raises(SurveyError, match=r"^s\.jsonl:1: .*" + msg.replace("[", r"\[")):
            parse([line], "s.jsonl", frame)


def test_the_simulators_radio_misses_far_beacons_has_offsets_and_heavy_tails_or_uses_the_store_model(store,
                                                                                                     tmp_path):
    cfg = load_store(store / "store.toml")
    bs = [b for b in cfg.beacons if b.floor == 0][:2]
    n = 4000
    rng = np.random.default_rng(0)
    near = ble_rssi(np.full(n, bs[0].x + 1.0), np.full(n, bs[0].y), bs, rng, seed=3)
    far = ble_rssi(np.full(n, bs[0].x + 250.0), np.full(n, bs[0].y), bs, rng, seed=3)
    assert 0.8 < near[1][:, 0].mean() < 0.95  # a beacon in range is usually, not always, heard
    assert far[1][:, 0].mean() < 0.1
    r = near[0][near[1][:, 0], 0]
    z = (r - np.median(r)) / (1.4826 * np.median(np.abs(r - np.median(r))))
    assert np.mean(np.abs(z) > 3.5) > 0.005  # heavier tails than a Gaussian (6e-4)
    again = ble_rssi(np.full(n, bs[0].x + 1.0), np.full(n, bs[0].y), bs, np.random.default_rng(1), seed=3)
    other = ble_rssi(np.full(n, bs[0].x + 1.0), np.full(n, bs[0].y), bs, np.random.default_rng(1), seed=4)
    assert abs(np.median(again[0][:, 0]) - np.median(near[0][:, 0])) < 0.6  # the offset is the beacon's
    assert np.median(again[0][:, 0]) != np.median(other[0][:, 0])  # and another store's differs
    # with a fitted model the simulator draws from it
    assert _cli("fit", "--config", store / "store.toml", tmp_path / "mon.jsonl", tmp_path / "tue.jsonl").returncode == 0
    from geometry.radio import BleModel

    fitted = load_store(store / "store.toml")
    m = BleModel.from_dict(fitted.ble_model)
    rssi, heard = ble_rssi(np.full(200, 20.0), np.full(200, 15.0), [b for b in fitted.beacons if b.floor == 0],
                           np.random.default_rng(2), model=m)
    assert rssi.shape == (200, len(fitted.beacons)) and 0 < heard.mean() < 1


def test_a_line_that_is_not_utf8_exits_1_naming_file_and_line_and_a_bom_is_no_bad_line(store, tmp_path):
    # a survey exported on one machine and edited on another: one stray Latin-1 byte
    toml = store / "store.toml"
    good = (tmp_path / "mon.jsonl").read_bytes().splitlines()
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b"\n".join(good[:6] + [b'{"walk": "caf\xe9", "ts": 1, "x": 1, "y": 2, "beacons": []}'] + good[6:]))
    r = _cli("fit", "--config", toml, bad)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{bad}:7: " in r.stderr and "UTF-8" in r.stderr
    # Notepad's "UTF-8" puts a byte-order mark before the first line: the line itself is fine
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b"\n".join(good) + b"\n")
    r = _cli("fit", "--config", toml, bom, tmp_path / "tue.jsonl", "--out", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr


def test_a_model_that_cannot_be_written_exits_1_with_a_clear_message(store, tmp_path):
    out = tmp_path / "no-such-dir" / "model.json"
    r = _cli("fit", "--config", store / "store.toml", tmp_path / "mon.jsonl", tmp_path / "tue.jsonl", "--out", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert str(out) in r.stderr and "cannot write" in r.stderr
    assert not list(tmp_path.glob("no-such-dir*"))


def test_fit_replaces_a_model_the_layout_no_longer_matches_or_a_broken_one(store, tmp_path):
    # The loader's own advice for a model whose beacon left the layout is "refit with
    # `edge-agent survey fit`": fit must not refuse because of the very file it replaces.
    toml = store / "store.toml"
    walks = [tmp_path / "mon.jsonl", tmp_path / "tue.jsonl"]
    assert _cli("fit", "--config", toml, *walks).returncode == 0
    layout = json.loads((store / "layout.geojson").read_text())
    gone = [f for f in layout["features"] if f["properties"].get("kind") == "beacon"][-1]
    layout["features"].remove(gone)
    (store / "layout.geojson").write_text(json.dumps(layout))
    gone_id = gone["properties"]["beacon_id"].lower()
    with pytest.raises(Exception, match="refit with `edge-agent survey fit`"):
        load_store(toml)
    rewalked = []
    for w in walks:  # the beacon taken down is no longer heard on the new walks
        lines = [json.loads(s) for s in w.read_text().splitlines()]
        for o in lines:
            o["beacons"] = [b for b in o["beacons"] if b["id"].lower() != gone_id]
        rewalked.append(tmp_path / f"re-{w.name}")
        rewalked[-1].write_text("\n".join(map(json.dumps, lines)) + "\n")
    r = _cli("fit", "--config", toml, *rewalked)
    assert r.returncode == 0, r.stderr
    assert load_store(toml).ble_model is not None  # the agent starts again
    (store / "ble-model.json").write_text("{")  # a half-copied model file
    r = _cli("fit", "--config", toml, *rewalked)
    assert r.returncode == 0, r.stderr
    assert load_store(toml).ble_model is not None


def _wifi_walk(name: str, seed: int, n: int = 80, sigma: float = 4.0, claim: float | None = 6.0) -> list[str]:
    """A surveyor's walk with the Wi-Fi engine's fix beside the truth: the engine
    errs by ``sigma`` m per axis and claims ``claim`` m (None: no acc at all)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        X, Y = rng.uniform(1, 39), rng.uniform(1, 29)
        ex, ey = rng.normal(0.0, sigma, 2)
        fix = {"x": round(X + ex, 2), "y": round(Y + ey, 2)} | ({"acc": claim} if claim is not None else {})
        lines.append(json.dumps({"walk": name, "ts": 1764930000.0 + 2 * i, "x": round(X, 2), "y": round(Y, 2),
                                 "floor": 0, "source": "wifi", "fix": fix}))
    return lines


def test_wifi_fixes_are_surveyed_the_same_way_and_get_an_honest_acc_scale(store, tmp_path):
    # DESIGN: "Wi-Fi and phone fixes can be surveyed the same way (x/y plus the engine's fix)
    # to calibrate their acc" - from the same command line, not only from Python.
    toml = store / "store.toml"
    for name, seed in (("wmon", 11), ("wtue", 12)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(_wifi_walk(name, seed)) + "\n")
    walks = [tmp_path / "wmon.jsonl", tmp_path / "wtue.jsonl"]
    r = _cli("fit", "--config", toml, *walks, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] is None and not (store / "ble-model.json").exists()  # no BLE scans: no BLE model
    wifi = out["fixes"]["wifi"]
    # a 6 m claim for a 4 m/axis error covers ~2/3, not 86.5 %; 2 sigma = 8 m: a factor ~1.33
    assert wifi["fixes"] == 160 and wifi["coverage_now"] < 0.8 and 1.1 < wifi["acc_scale"] < 1.6
    rep = wifi["report"]
    assert wifi["cross_validated"] == "one walk held out at a time"
    assert 3.0 < rep["median_error_m"] < 7.0 and abs(rep["coverage"] - 0.865) < 0.08
    assert abs(sum(rep["zones"]["grocery"][k] for k in ("right", "wrong", "none")) - 1.0) < 1e-6
    r = _cli("fit", "--config", toml, *walks)
    assert r.returncode == 0 and f"[tracking.acc_scale]\nwifi = {wifi['acc_scale']:g}" in r.stdout

    # the factor put in store.toml: `survey report` now finds the claim honest
    r = _cli("report", "--config", toml, *walks, "--json")
    assert json.loads(r.stdout)["fixes"]["wifi"]["report"]["coverage"] < 0.8
    toml.write_text(toml.read_text() + f"\n[tracking.acc_scale]\nwifi = {wifi['acc_scale']}\n")
    r = _cli("report", "--config", toml, *walks, "--json")
    assert r.returncode == 0, r.stderr
    assert abs(json.loads(r.stdout)["fixes"]["wifi"]["report"]["coverage"] - 0.865) < 0.03

    # BLE scans and phone fixes in the same survey: the BLE model is fitted as before
    phone = tmp_path / "phone.jsonl"
    from geometry.frames import LocalFrame

    cfg = load_store(toml)
    frame = LocalFrame(cfg.anchor.lat, cfg.anchor.lon, cfg.anchor.bearing)
    rng = np.random.default_rng(3)
    lines = []
    for i in range(40):
        X, Y = rng.uniform(1, 39), rng.uniform(1, 29)
        lon, lat = frame.to_wgs84(np.array([X + rng.normal(0, 8)]), np.array([Y + rng.normal(0, 8)]))
        lines.append(json.dumps({"walk": "phone", "ts": 1764930000.0 + i, "x": X, "y": Y, "fix": {
            "coords": {"latitude": float(lat[0]), "longitude": float(lon[0]), "accuracy": 20}, "timestamp": 1}}))
    phone.write_text("\n".join(lines) + "\n")
    r = _cli("fit", "--config", toml, tmp_path / "mon.jsonl", tmp_path / "tue.jsonl", phone, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == str(store / "ble-model.json") and out["report"]["scans"] == 320
    assert set(out["fixes"]) == {"html5"} and out["fixes"]["html5"]["fixes"] == 40

    # too few fixes, and a bad fix, exit 1 naming what and where
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(_wifi_walk("w", 1, n=12)) + "\n")
    r = _cli("fit", "--config", toml, few)
    assert r.returncode == 1 and "too few scans: 12 wifi fixes" in r.stderr
    bad = tmp_path / "badfix.jsonl"
    bad.write_text("\n".join(_wifi_walk("w", 1, n=3) + ['{"walk": "w", "ts": 1, "x": 1, "y": 2, "fix": {"x": 1}}'])
                   + "\n")
    r = _cli("fit", "--config", toml, bad)
    assert r.returncode == 1 and f"{bad}:4: fix 'x' and 'y' must both be numbers" in r.stderr


@pytest.mark.broker
async def test_the_running_agent_takes_a_new_fit_on_reload_and_a_restarted_one_at_start(store, tmp_path, mosquitto,
                                                                                       agent_factory):
    import asyncio

    toml = store / "store.toml"
    text = toml.read_text().replace('url = "mqtt://127.0.0.1:1883"', f'url = "{mosquitto.url}"')
    text = text.replace('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:0"').replace('id = "S042"', 'id = "SV1"')
    toml.write_text(text + "\n[reload]\npoll_s = 0.05\n")
    server = await agent_factory(load_store(toml))
    agent = server.agent
    assert agent.state.rt.ble.meta == {}  # the no-survey defaults
    events: asyncio.Queue = asyncio.Queue()
    agent.listeners.append(lambda kind, data: events.put_nowait(data) if kind == "reload" else None)
    r = await asyncio.to_thread(_cli, "fit", "--config", toml, tmp_path / "mon.jsonl", tmp_path / "tue.jsonl")
    assert r.returncode == 0, r.stderr
    ev = await asyncio.wait_for(events.get(), 10)
    assert ev["result"] == "ok"
    assert agent.state.rt.ble.meta["scans"] == 320 and agent.state.rt.ble.meta["walks"] == 2
    await server.stop()
    again = await agent_factory(load_store(toml))
    assert again.agent.state.rt.ble.meta["scans"] == 320

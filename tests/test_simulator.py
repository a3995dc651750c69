"""The simulator end to end: `edge-agent simulate` against a real agent over MQTT
(real Mosquitto through `--broker`, and once the embedded broker), scored on
the sample store.  Runs are short (few shoppers, a few simulated minutes) and
cached per (tech, seed, broker) for the module."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely

from edge_agent.commands.cli import main
from simulator.report import deterministic_part
from simulator.run import plan
from store_config import lint, load_store, sample_path

SHOPPERS = 8
DURATION = 300

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def run_sim(tmp_path_factory, mosquitto):
    cache: dict = {}

    def run(tech: str, seed: int, *, embedded: bool = False, extra: tuple = ()) -> tuple[dict, Path]:
        key = (tech, seed, embedded, extra)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"sim-{tech}-{seed}")
            argv = ["simulate", "--config", str(sample_path()), "--shoppers", str(SHOPPERS), "--duration",
                    str(DURATION), "--seed", str(seed), "--tech", tech, "--out", str(out), "--no-progress", *extra]
            if not embedded:
                argv += ["--broker", mosquitto.url]
            assert main(argv) == 0
            cache[key] = (json.loads((out / "report.json").read_text()), out)
        return cache[key]

    return run


def test_exact_scores_every_visited_zone(run_sim):
    report, out = run_sim("exact", 7)
    visited = {z: v for z, v in report["zones"].items() if v["visits"]}
    assert len(visited) >= 8, "the run should visit most zones"
    for zid, z in visited.items():
        assert z["precision"] >= 0.99 and z["recall"] >= 0.99, (zid, z)
        assert z["detection_delay_s"] <= 1.0, (zid, z)
    for zid, z in report["zones"].items():
        if not z["visits"]:
            assert z["precision"] is None and z["recall"] is None
    assert report["zones"]["back-room"]["visits"] == 0, "shoppers never walk through staff-only areas"
    assert report["lint_flagged"] == []
    assert report["totals"]["offers"] > 0
    lat = report["latency_ms"]
    assert lat["n"] > 0 and 0 <= lat["p50"] <= lat["p99"]


def test_html5_small_fences_fail_and_lint_said_so(run_sim):
    report, _ = run_sim("html5", 7)
    cfg = load_store(sample_path())
    flagged_before = sorted({p.where.split('"')[1] for p in lint(cfg, tech="html5")
                             if p.message.startswith("will not work")})
    assert report["lint_flagged"] == flagged_before
    displays = [f.id for f in cfg.fences if f.kind == "display"]
    visited = {z: v for z, v in report["zones"].items() if v["visits"]}
    low = {z for z, v in visited.items() if v["recall"] < 0.5}
    assert set(displays) & set(visited), "the run should visit some displays"
    for d in set(displays) & set(visited):
        assert d in low and d in flagged_before
    # every fence lint said will not work failed; a fence that failed anyway was predicted to need a long dwell
    from store_config.lint import predict

    assert set(flagged_before) & set(visited) <= low
    for z in low - set(flagged_before):
        assert predict(cfg, cfg.fence(z), "html5").dwell_s >= 30, z
    failing = {a["zone"] for a in report["advice"] if a["verdict"] in ("will fail", "fails")}
    assert low <= failing
    advice = next(a["text"] for a in report["advice"] if a["zone"] == "new-endcap")
    assert "enlarge" in advice and "html5" in advice


def test_same_seed_same_report_other_seed_differs(run_sim):
    a, _ = run_sim("exact", 7)
    b, _ = run_sim("exact", 7, embedded=True)  # the default: embedded broker
    c, _ = run_sim("exact", 8)
    da, db, dc = deterministic_part(a), deterministic_part(b), deterministic_part(c)
    for d in (da, db, dc):  # how the run was wired, not what it measured
        d.pop("mode"), d.pop("broker")
    assert da == db
    assert da != dc
    assert da["zones"] != dc["zones"]
    assert set(a["nondeterministic"]) == {"latency_ms", "timing"}


def test_outputs_and_map_is_a_real_picture(run_sim):
    _, out = run_sim("exact", 7)
    md = (out / "report.md").read_text()
    assert "| zone |" in md and "new-endcap" in md and "latency" in md
    import matplotlib.image as mpimg

    png = out / "map.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(png)
    h, w = img.shape[:2]
    assert w >= 600 and h >= 400
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200, "a layout with fences, paths and a heatmap has many colours"


def test_mac_randomisation_gives_devices_new_ids(run_sim):
    report, _ = run_sim("exact", 7, extra=("--mac-randomisation",))
    assert report["mac_randomisation"] is True
    assert report["totals"]["devices"] > SHOPPERS
    visited = {z: v for z, v in report["zones"].items() if v["visits"]}
    # the agent sees a new device mid-visit, but the shopper was still detected
    assert all(v["recall"] >= 0.99 for v in visited.values())


def test_compare_fusion_side_by_side_and_the_broker_named(tmp_path):
    """Self-contained (no --broker): Mosquitto is installed, so the run uses it and says so."""
    out = tmp_path / "cmp"
    argv = ["simulate", "--config", str(sample_path()), "--shoppers", "3", "--duration", "120", "--seed", "2",
            "--tech", "uwb", "--out", str(out), "--no-progress", "--compare-fusion"]
    assert main(argv) == 0
    r = json.loads((out / "report.json").read_text())
    assert (r["broker"], r["tracker"]) == ("mosquitto", "fused")
    c = r["compare"]
    assert c["trackers"] == ["single_fix", "fused"] and set(c["zones"]) == set(r["zones"])
    for z in c["zones"].values():
        assert set(z) == {"kind", "single_fix", "fused"}
        assert {"visits", "recall", "precision", "detection_delay_s", "recall_stays"} <= set(z["fused"])
    assert c["worse"] == [], "a precise (UWB) fix passes the fused tracker unchanged"
    single = json.loads((out / "single-fix" / "report.json").read_text())
    assert single["tracker"] == "single_fix" and "compare" not in single
    assert {z: v["single_fix"]["recall"] for z, v in c["zones"].items()} == \
        {z: v["recall"] for z, v in single["zones"].items()}
    md = (out / "report.md").read_text()
    assert "Single-fix rule → fused tracker" in md and "Broker: Mosquitto" in md


def test_without_mosquitto_the_embedded_broker_serves_and_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSQUITTO", "")  # no Mosquitto on this machine
    out = tmp_path / "amqtt"
    argv = ["simulate", "--config", str(sample_path()), "--shoppers", "2", "--duration", "60", "--seed", "2",
            "--tech", "exact", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["broker"] == "amqtt" and "compare" not in r
    assert "embedded amqtt" in (out / "report.md").read_text()


def test_compare_fusion_refuses_attach(capsys):
    assert main(["simulate", "--config", str(sample_path()), "--attach", "--compare-fusion", "--no-progress"]) == 2
    assert "--compare-fusion" in capsys.readouterr().err


def test_walks_stay_in_walkable_space():
    cfg = load_store(sample_path())
    pl = plan(cfg, shoppers=12, duration=600, seed=3, tech="exact")
    staff = shapely.union_all([f.geometry for f in cfg.fences if f.kind == "staff_only"])
    shelves = pl.space.obstacles
    for s in pl.shoppers:
        ts = np.arange(s.arrive, s.leave, 0.25)
        xs, ys = s.position(ts)
        assert not shapely.contains_xy(staff, xs, ys).any()
        assert not shapely.contains_xy(shelves, xs, ys).any()
        speeds = np.hypot(np.diff(s.x), np.diff(s.y)) / np.maximum(np.diff(s.t), 1e-9)
        assert speeds.max() <= 1.4 + 1e-6
        for st in s.stops:
            f = cfg.fence(st.zone)
            assert 5.0 <= st.leave - st.arrive <= 90.0
            if f.kind == "display":
                assert np.hypot(st.x - f.circle[0], st.y - f.circle[1]) <= 0.5 + 1e-9
    again = plan(cfg, shoppers=12, duration=600, seed=3, tech="exact")
    assert [s.payload for s in again.samples] == [s.payload for s in pl.samples]


async def test_attach_drives_a_running_agent(tmp_path, mosquitto, agent_factory):
    """--attach: an agent already serving the store (events on, ping clock) on the config's broker."""
    store = tmp_path / "store"
    shutil.copytree(sample_path().parent, store)
    toml = (store / "store.toml").read_text()
    toml = toml.replace('url = "mqtt://127.0.0.1:1883"', f'url = "{mosquitto.url}"')
    toml = toml.replace('dir = "var"', f'dir = "{tmp_path / "var"}"')
    toml += '\n[tracking]\nclock = "ping"\npublish_events = true\n'
    (store / "store.toml").write_text(toml)
    cfg = load_store(store / "store.toml")
    await agent_factory(cfg)
    out = tmp_path / "out"
    argv = ["simulate", "--config", str(store / "store.toml"), "--attach", "--shoppers", "4", "--duration", "200",
            "--seed", "5", "--tech", "uwb", "--out", str(out), "--no-progress"]
    rc = await asyncio.to_thread(main, argv)
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "attach"
    assert report["totals"]["enters"] > 0
    visited = [v for v in report["zones"].values() if v["visits"]]
    assert visited and np.mean([v["recall"] for v in visited]) >= 0.8


def test_lint_flags_fences_unreachable_from_an_entrance(store_factory):
    from tests.conftest import BASE_LAYOUT

    layout = json.loads(json.dumps(BASE_LAYOUT))
    layout["features"] += [
        {"type": "Feature", "properties": {"id": "outline", "kind": "outline"},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [30, 0], [30, 20], [0, 20], [0, 0]]]}},
        # a staff-only ring walls the coffee display off
        {"type": "Feature", "properties": {"id": "stock", "kind": "staff_only"},
         "geometry": {"type": "Polygon", "coordinates": [
             [[2, 9], [8, 9], [8, 15], [2, 15], [2, 9]], [[3, 10], [3, 14], [7, 14], [7, 10], [3, 10]]]}},
    ]
    cfg = store_factory(layout=layout)
    unreachable = [p.where for p in lint(cfg) if "unreachable" in p.message]
    assert unreachable == ['feature "coffee-display"']
    assert not [p for p in lint(load_store(sample_path())) if "unreachable" in p.message]


def test_rush_at_the_tills_is_a_queue():
    """The crowd plan (pure): shoppers walk in early, every one ends at a checkout,
    at most TILLS are served at once, and the same seed gives the same rush."""
    from simulator.crowd import SERVICE_RANGE, TILLS, make_rush, true_floor
    from simulator.space import build_space

    cfg = load_store(sample_path())
    space = build_space(cfg, 0)
    rush = make_rush(cfg, space, n=18, duration=300, seed=1)
    assert max(s.arrive for s in rush) <= 0.2 * 300
    tills = [s.stops[-1] for s in rush]
    assert all(cfg.fence(st.zone).kind == "checkout" for st in tills)
    assert all(st.leave - st.arrive >= SERVICE_RANGE[0] - 1e-9 for st in tills)
    # service ends: at no time are more than TILLS shoppers being served (each was served its last ≤ 60 s)
    ends = sorted(st.leave for st in tills)
    for i in range(len(ends) - TILLS):
        assert ends[i + TILLS] - ends[i] >= SERVICE_RANGE[0] - 1e-6
    _, counts, waiting = true_floor(cfg, rush, 300)
    assert counts["checkouts"].max() > cfg.fence("checkouts").capacity
    assert waiting["checkouts"].max() >= cfg.fence("checkouts").queue_alert_at
    again = make_rush(cfg, space, n=18, duration=300, seed=1)
    assert [s.t.tolist() for s in again] == [s.t.tolist() for s in rush]


def test_crowd_reports_the_floor_and_a_queue_alert(tmp_path, mosquitto):
    """--crowd through Mosquitto: per zone peak occupancy against capacity, and the
    queue alert learnt from {R}/alert/# with how early it came."""
    out = tmp_path / "rush"
    argv = ["simulate", "--config", str(sample_path()), "--crowd", "--shoppers", "18", "--duration", "300",
            "--speed", "20", "--seed", "1", "--tech", "exact", "--out", str(out), "--no-progress",
            "--broker", mosquitto.url]
    assert main(argv) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["scenario"] == "crowd" and "floor" in r["nondeterministic"]
    fl = r["floor"]
    assert set(fl) >= {"rush", "speed", "resolution_s", "sustain_s", "zones", "advice"}
    assert fl["speed"] == 20 and fl["rush"]["shoppers"] == 18 and fl["rush"]["start_s"] is not None
    cfg = load_store(sample_path())
    assert set(fl["zones"]) == {f.id for f in cfg.fences if f.kind != "staff_only"}
    for zid, z in fl["zones"].items():
        assert {"kind", "capacity", "peak_true", "peak_true_at_s", "peak_seen"} <= set(z)
        assert z["capacity"] == cfg.fence(zid).capacity
        if z["capacity"]:
            assert {"peak_of_capacity", "over_capacity_s", "crowding"} <= set(z)
    co = fl["zones"]["checkouts"]
    assert co["peak_true"] > co["capacity"]
    # {R}/floor comes at most once a wall second (here 20 simulated s): it may miss the very top
    assert co["peak_true"] + 1 >= co["peak_seen"] >= 0.6 * co["peak_true"]  # truth is on a 1 s grid
    q = co["queue"]
    assert q["due_s"] is not None, "the rush makes a queue"
    assert q["fired_s"] is not None and q["alerts"] >= 1, "and the agent said so on {R}/alert/#"
    assert q["after_rush_s"] > 0
    # not before the truth had the queue (less one agent tick), and not long after it
    assert -fl["resolution_s"] <= q["after_due_s"] <= 3 * fl["resolution_s"] + 10
    md = (out / "report.md").read_text()
    assert "rush at the tills" in md and "queue alert" in md and "| checkouts |" in md


def test_crowd_refuses_an_unpaced_run(capsys):
    assert main(["simulate", "--config", str(sample_path()), "--crowd", "--speed", "0", "--no-progress"]) == 2
    assert "--speed" in capsys.readouterr().err

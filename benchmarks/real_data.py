"""Public, labelled BLE RSSI data sets as survey files (the ``survey fit`` line format).

Two data sets, both with the *receivers* fixed and one transmitter carried
around (the reverse of a phone scanning store beacons; the RSSI between a
fixed and a moving radio is the same either way, and a receiver that heard
nothing in a window is a beacon not heard):

* ``calib2021`` -- Kolakowski, "BLE RSS dataset for fingerprinting radio map
  calibration" (github.com/marckolak/ble-rss-fingerprints-calib2021, CC BY
  4.0): a furnished flat of ~9 x 7 m, 6 anchors, a robot carrying the tag;
  RSSI per anchor averaged over 1/3 s.  Walks: the four calibration runs and
  the test run (``calibration/calibration_df.csv``, ``tests/test_robot_df.csv``),
  every third row kept (one scan a second, like a phone).
* ``tetam`` -- Danis et al., "Position Annotated BLE RSSI Dataset"
  (github.com/philotuxo/Position-Annotated-BLE-RSSI-Dataset, CC0 1.0): a
  20.7 x 17.6 m office floor, 12 sensors, one beacon; fingerprints at fixed
  points on two dates (``hst/set_1``, ``hst/set_2``: 30 one-second windows
  per point kept) and nine tracks with camera ground truth (``trk/``).  A
  scan is a one-second window: per sensor the mean RSSI of the packets it
  heard, the truth the mean annotated position.

``python benchmarks/real_data.py convert`` rebuilds the extracts under
``benchmarks/data/<name>/`` from the mirrors (``git`` objects of the fetched
repositories; ``--mirror-root``); the benchmarks read only the extracts.
Each extract: ``scans.jsonl`` (survey lines: walk, ts, x, y, floor, beacons),
``layout.json`` (beacon id -> x, y, floor) and ``zones.json`` (zone id ->
polygon in metres: a partition of the floor into cells of a few metres).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
MIRRORS = Path("/work/.mirror")
NAMES = ("calib2021", "tetam")


def _git_show(repo: Path, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


def _git_ls(repo: Path, under: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", "HEAD", under], check=True,
                         capture_output=True, text=True).stdout
    return [p for p in out.splitlines() if p]


def _grid_zones(w: float, h: float, nx: int, ny: int) -> dict[str, list[list[float]]]:
    zones = {}
    for j in range(ny):
        for i in range(nx):
            x0, x1 = w * i / nx, w * (i + 1) / nx
            y0, y1 = h * j / ny, h * (j + 1) / ny
            zones[f"z{j}{i}"] = [[round(x0, 2), round(y0, 2)], [round(x1, 2), round(y0, 2)],
                                 [round(x1, 2), round(y1, 2)], [round(x0, 2), round(y1, 2)]]
    return zones


def convert_calib2021(mirror: Path) -> tuple[list[dict], dict, dict]:
    repo = mirror / "marckolak+ble-rss-fingerprints-calib2021" / "repo"
    anchors = {}
    for row in csv.DictReader(io.StringIO(_git_show(repo, "anchors.csv"))):
        anchors[f"anchor-{row['id']}"] = {"x": float(row["x"]), "y": float(row["y"]), "floor": 0}
    scans = []

    def rows(path):
        r = list(csv.reader(io.StringIO(_git_show(repo, path))))
        head = r[0]
        return head, [[float(v) if v else None for v in row] for row in r[1:]]

    head, data = rows("calibration/calibration_df.csv")
    walk_no, last_ts = 1, None
    walk_rows: dict[str, list] = defaultdict(list)
    for row in data:
        ts = row[1] / 1e9
        if last_ts is not None and ts - last_ts > 30:
            walk_no += 1
        last_ts = ts
        walk_rows[f"calib{walk_no}"].append(row)
    walk_rows["test-robot"] = rows("tests/test_robot_df.csv")[1]
    ids = [h.replace("rssi_", "anchor-") for h in head[5:]]
    for walk, rs in walk_rows.items():
        for row in rs[::3]:
            beacons = [{"id": bid, "rssi": round(v)} for bid, v in zip(ids, row[5:]) if v is not None]
            scans.append({"walk": walk, "ts": round(row[1] / 1e9, 2), "x": round(row[2], 3),
                          "y": round(row[4], 3), "floor": 0, "beacons": beacons})
    return scans, anchors, _grid_zones(9.07, 7.1, 3, 2)


def _tetam_windows(lines, with_truth: bool, window: float = 1.0):
    """Group ``ts,sensor,beacon,rssi[,x,y,z,...]`` lines into windows."""
    per: dict[int, dict] = {}
    t0 = None
    for ln in lines:
        p = ln.split(",")
        if len(p) < 4:
            continue
        ts = float(p[0])
        if t0 is None:
            t0 = ts
        k = int((ts - t0) // window)
        w = per.setdefault(k, {"ts": [], "rssi": defaultdict(list), "xy": []})
        w["ts"].append(ts)
        w["rssi"][p[1]].append(float(p[3]))
        if with_truth:
            w["xy"].append((float(p[4]), float(p[5])))
    return [per[k] for k in sorted(per)]


def convert_tetam(mirror: Path, per_point: int = 30) -> tuple[list[dict], dict, dict]:
    repo = mirror / "philotuxo+Position-Annotated-BLE-RSSI-Dataset" / "repo"
    dev = _git_show(repo, "cnf/tetam.dev")
    dongles = json.loads(dev.split("Dongles:", 1)[1].split("\n", 1)[0])
    layout = {f"sensor-{mac}": {"x": float(v[0][0]), "y": float(v[0][1]), "floor": 0} for mac, v in dongles.items()}
    scans = []
    for s in ("set_1", "set_2"):
        points: dict[str, list[str]] = defaultdict(list)
        for p in _git_ls(repo, f"hst/{s}"):
            if p.endswith(".mbd"):
                _, x, y, _z = Path(p).stem.split("_")
                points[f"{x}_{y}"].append(p)
        for key in sorted(points):
            x, y = (float(v) for v in key.split("_"))
            lines = []
            for p in points[key]:
                lines += _git_show(repo, p).splitlines()
            lines.sort()
            wins = _tetam_windows(lines, False)[1:-1]
            if not wins:
                continue
            pick = np.linspace(0, len(wins) - 1, min(per_point, len(wins))).round().astype(int)
            for k in sorted(set(pick.tolist())):
                w = wins[k]
                scans.append({"walk": s.replace("_", ""), "ts": round(min(w["ts"]), 2), "x": x, "y": y, "floor": 0,
                              "beacons": [{"id": f"sensor-{mac}", "rssi": round(float(np.mean(v)))}
                                          for mac, v in sorted(w["rssi"].items())]})
    for p in _git_ls(repo, "trk"):
        if not p.endswith("_all_sensors.mbd"):
            continue
        walk = Path(p).name.replace("_all_sensors.mbd", "")
        for w in _tetam_windows(_git_show(repo, p).splitlines(), True):
            if len(w["ts"]) < 3:
                continue
            xy = np.mean(np.array(w["xy"]), axis=0)
            scans.append({"walk": walk, "ts": round(min(w["ts"]), 2), "x": round(float(xy[0]), 3),
                          "y": round(float(xy[1]), 3), "floor": 0,
                          "beacons": [{"id": f"sensor-{mac}", "rssi": round(float(np.mean(v)))}
                                      for mac, v in sorted(w["rssi"].items())]})
    return scans, layout, _grid_zones(20.66, 17.64, 4, 3)


CONVERTERS = {"calib2021": convert_calib2021, "tetam": convert_tetam}


def write(name: str, scans, layout, zones, out: Path = DATA) -> Path:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "scans.jsonl", "w") as f:
        for s in scans:
            f.write(json.dumps(s, separators=(",", ":")) + "\n")
    (d / "layout.json").write_text(json.dumps(layout, indent=1) + "\n")
    (d / "zones.json").write_text(json.dumps(zones, indent=1) + "\n")
    return d


class Dataset:
    """One converted data set, as arrays: ``walk`` (str per scan), ``ts``,
    ``x``, ``y``, ``rssi`` (scans x beacons, NaN = not heard), ``ids``
    (beacon ids, the columns), ``bx``, ``by`` (beacon positions), ``zones``."""

    def __init__(self, name: str, root: Path = DATA):
        d = root / name
        if not (d / "scans.jsonl").exists():
            raise SystemExit(f"{d / 'scans.jsonl'} is missing: run `python benchmarks/real_data.py convert` "
                             f"after fetching the data sets (see {d / 'README.md'})")
        self.name = name
        self.layout = json.loads((d / "layout.json").read_text())
        self.zones = json.loads((d / "zones.json").read_text())
        self.ids = sorted(self.layout)
        col = {b: i for i, b in enumerate(self.ids)}
        self.lines = [json.loads(ln) for ln in (d / "scans.jsonl").read_text().splitlines() if ln.strip()]
        n = len(self.lines)
        self.walk = np.array([s["walk"] for s in self.lines])
        self.ts = np.array([s["ts"] for s in self.lines], dtype=float)
        self.x = np.array([s["x"] for s in self.lines], dtype=float)
        self.y = np.array([s["y"] for s in self.lines], dtype=float)
        self.rssi = np.full((n, len(self.ids)), np.nan)
        for i, s in enumerate(self.lines):
            for b in s["beacons"]:
                self.rssi[i, col[b["id"]]] = b["rssi"]
        self.bx = np.array([self.layout[b]["x"] for b in self.ids])
        self.by = np.array([self.layout[b]["y"] for b in self.ids])

    @property
    def walks(self) -> list[str]:
        return list(dict.fromkeys(self.walk.tolist()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", choices=["convert", "stats"])
    ap.add_argument("--mirror-root", default=str(MIRRORS))
    ap.add_argument("names", nargs="*", default=list(NAMES))
    a = ap.parse_args(argv)
    for name in a.names:
        if a.cmd == "convert":
            d = write(name, *CONVERTERS[name](Path(a.mirror_root)))
            print(f"{name}: wrote {d}")
        ds = Dataset(name)
        heard = (~np.isnan(ds.rssi)).sum(1)
        print(f"{name}: {len(ds.lines)} scans, {len(ds.ids)} beacons, walks "
              + ", ".join(f"{w} ({int((ds.walk == w).sum())})" for w in ds.walks)
              + f"; beacons heard per scan: {np.bincount(heard).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

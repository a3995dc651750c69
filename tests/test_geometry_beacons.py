import math
from dataclasses import dataclass

import pytest

from geometry.beacons import locate, locate_detail, rssi_to_distance


@dataclass(frozen=True)
class B:
    x: float
    y: float
    floor: int = 0
    tx_power: float = -59.0


def rssi_at(d, tx=-59.0, n=2.0):
    return tx - 10 * n * math.log10(d)


SQUARE = {
    "u:1:1": B(0, 0),
    "u:1:2": B(10, 0),
    "u:1:3": B(0, 10),
    "u:1:4": B(10, 10),
    "u:9:9": B(100, 100, floor=2),
}


def test_rssi_to_distance_model():
    assert rssi_to_distance(-59, -59) == pytest.approx(1.0)
    assert rssi_to_distance(-79, -59) == pytest.approx(10.0)
    assert rssi_to_distance(-79, -59, n=4.0) == pytest.approx(math.sqrt(10))


@pytest.mark.parametrize("truth", [(3.0, 4.0), (5.0, 5.0), (6.5, 2.5)])
def test_four_beacons_locate_within_1m(truth):
    readings = [(bid, rssi_at(math.hypot(b.x - truth[0], b.y - truth[1]))) for bid, b in SQUARE.items() if b.floor == 0]
    x, y, floor, acc = locate(readings, SQUARE)
    assert math.hypot(x - truth[0], y - truth[1]) < 1.0
    assert floor == 0
    assert acc >= 1.5


def test_one_beacon_gives_large_accuracy():
    d = rssi_to_distance(-75, -59)
    x, y, floor, acc = locate([("u:1:4", -75)], SQUARE)
    assert (x, y, floor) == (10, 10, 0)
    assert acc >= d


def test_unknown_beacons_ignored_and_counted_ids_lowercased():
    readings = [("U:1:1", -60.0), ("nope:1:1", -40.0), ("other:2:2", -50.0)]
    res, unknown = locate_detail(readings, SQUARE)
    assert unknown == 2
    assert res[:3] == (0, 0, 0)
    assert locate([("nope:1:1", -40.0)], SQUARE) is None
    assert locate_detail([], SQUARE) == (None, 0)


def test_floor_of_strongest_and_strongest_limit():
    readings = [("u:9:9", -50.0), ("u:1:1", -70.0), ("u:1:2", -71.0)]
    res = locate(readings, SQUARE, strongest=1)
    assert res[2] == 2 and res[:2] == (100, 100)
    res = locate(readings, SQUARE)
    assert res[2] == 2


def _grid():
    """Two rows of beacons 10 m apart, 5 m between columns (a sparse grid)."""
    return {f"g:{i}:{j}": B(5.0 * i, 10.0 * j) for i in range(5) for j in range(2)}


def test_beyond_the_last_row_is_not_its_mirror_image():
    # 2.5 m past the back row: a range fit started inside the grid found the mirror (y ~ 7.5)
    grid = _grid()
    truth = (10.0, 12.5)
    readings = [(bid, rssi_at(math.hypot(b.x - truth[0], b.y - truth[1]))) for bid, b in grid.items()]
    x, y, _, _ = locate(readings, grid, min_acc=0.0)
    assert math.hypot(x - truth[0], y - truth[1]) < 0.5


def test_accuracy_follows_the_geometry():
    # between both rows (beacons on every side) a fix is better than past the last row
    grid = _grid()

    def acc_at(p):
        readings = [(bid, rssi_at(math.hypot(b.x - p[0], b.y - p[1]))) for bid, b in grid.items()]
        return locate(readings, grid, min_acc=0.0, rssi_sigma_db=4.0)[3]

    inside, outside = acc_at((10.0, 5.0)), acc_at((10.0, 14.0))
    assert 0 < inside < outside
    # scaling the assumed RSSI noise scales the claimed accuracy
    readings = [(bid, rssi_at(math.hypot(b.x - 10.0, b.y - 5.0))) for bid, b in grid.items()]
    assert locate(readings, grid, min_acc=0.0, rssi_sigma_db=8.0)[3] == pytest.approx(2 * inside, rel=1e-6)

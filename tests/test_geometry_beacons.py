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

import math

import numpy as np
import pytest

from geometry.frames import LocalFrame


def test_round_trip_rotated_anchor_below_1mm_within_1km():
    frame = LocalFrame(48.8566, 2.3522, bearing=12.5)
    rng = np.random.default_rng(7)
    x = rng.uniform(-700, 700, 2000)
    y = rng.uniform(-700, 700, 2000)
    lon, lat = frame.to_wgs84(x, y)
    x2, y2 = frame.to_local(lon, lat)
    assert isinstance(x2, np.ndarray)
    assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-3


def test_round_trip_from_wgs84_side():
    frame = LocalFrame(-33.87, 151.21, bearing=-47.0)
    rng = np.random.default_rng(3)
    lon = 151.21 + rng.uniform(-0.008, 0.008, 500)
    lat = -33.87 + rng.uniform(-0.006, 0.006, 500)
    x, y = frame.to_local(lon, lat)
    assert np.all(np.hypot(x, y) < 1000)
    lon2, lat2 = frame.to_wgs84(x, y)
    x2, y2 = frame.to_local(lon2, lat2)
    assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-3


def test_anchor_is_origin_and_scalars_stay_scalars():
    frame = LocalFrame(51.5, -0.12, bearing=30)
    x, y = frame.to_local(-0.12, 51.5)
    assert isinstance(x, float) and isinstance(y, float)
    assert abs(x) < 1e-6 and abs(y) < 1e-6
    lon, lat = frame.to_wgs84(0.0, 0.0)
    assert lon == pytest.approx(-0.12, abs=1e-9) and lat == pytest.approx(51.5, abs=1e-9)


def test_bearing_zero_is_east_north():
    frame = LocalFrame(40.0, -74.0)
    lon, lat = frame.to_wgs84(0.0, 100.0)  # 100 m up the plan = north
    assert lon == pytest.approx(-74.0, abs=1e-9) and lat > 40.0
    x, y = frame.to_local(-74.0 + 0.001, 40.0)  # a little east
    assert x > 0 and abs(y) < 0.01


def test_bearing_90_point_due_east_is_plan_up():
    frame = LocalFrame(40.0, -74.0, bearing=90.0)
    x, y = frame.to_local(-74.0 + 0.001, 40.0)
    assert abs(x) < 0.01 and y > 0  # a parallel curves away from the aeqd axis by < 1 mm here
    assert y == pytest.approx(85.4, abs=0.5)  # ~ 0.001 deg of longitude at 40N
    # plan +x then points south
    lon, lat = frame.to_wgs84(50.0, 0.0)
    assert lat < 40.0 and lon == pytest.approx(-74.0, abs=1e-9)


def test_distances_preserved_by_rotation():
    a = LocalFrame(35.0, 139.0, bearing=0.0)
    b = LocalFrame(35.0, 139.0, bearing=77.0)
    lon, lat = 139.002, 35.001
    xa, ya = a.to_local(lon, lat)
    xb, yb = b.to_local(lon, lat)
    assert math.hypot(xa, ya) == pytest.approx(math.hypot(xb, yb), abs=1e-6)
    ang = math.degrees(math.atan2(xa, ya) - math.atan2(xb, yb))
    assert (ang - 77.0 + 180) % 360 - 180 == pytest.approx(0.0, abs=1e-6)

"""Vendor floor plans → local frame: the pure transform and its validation."""

from __future__ import annotations

import math

import pytest

from geometry.floorplans import FEET_M, PlanTransform, metres_per_unit
from store_config import ConfigError, load_store
from tests.conftest import write_store


def test_pixel_plan_with_rotation_maps_known_pixel_within_5cm():
    # 20 px per metre, image y grows downwards, plan +x turned 30° CCW from
    # local +x, the image's top-left corner at local (4, 2).
    plan = PlanTransform(units="pixels", scale=20.0, origin=(4.0, 2.0), rotation=30.0, flip_y=True)
    # Pixel (200, 100) is 10 m along the plan's x and 5 m *down* the image:
    # the plan vector (10, -5) rotated by 30° is (10 cos30 + 5 sin30, 10 sin30 - 5 cos30).
    expected = (4.0 + 8.660254 + 2.5, 2.0 + 5.0 - 4.330127)
    x, y = plan.to_local(200.0, 100.0)
    assert math.hypot(x - expected[0], y - expected[1]) < 0.05
    # and back
    u, v = plan.to_plan(x, y)
    assert (u, v) == pytest.approx((200.0, 100.0))
    # an error radius of 30 px is 1.5 m
    assert plan.distance(30.0) == pytest.approx(1.5)


def test_feet_and_metres_and_unit_override():
    ft = PlanTransform(units="feet", origin=(1.0, 1.0), rotation=90.0)
    x, y = ft.to_local(10.0, 0.0)  # 10 ft along the plan's x = local +y
    assert (x, y) == pytest.approx((1.0, 1.0 + 10 * FEET_M))
    m = PlanTransform(units="metres")
    assert m.to_local(3.0, 4.0) == pytest.approx((3.0, 4.0))
    assert m.to_local(3.0, 4.0, units="FEET") == pytest.approx((3 * FEET_M, 4 * FEET_M))
    with pytest.raises(ValueError):
        metres_per_unit("pixels")  # no scale
    with pytest.raises(ValueError):
        metres_per_unit("furlongs")


def test_floorplans_load_and_validate(tmp_path):
    path = write_store(tmp_path, broker_url="mqtt://127.0.0.1:1883", toml_extra="""
        [[floorplans]]
        id = "g_643451796760560979"
        name = "Ground"
        units = "pixels"
        scale = 20
        origin = [4, 2]
        rotation = 30
        flip_y = true

        [[floorplans]]
        id = "D635A61B06673775ADFF61D70B55785C"
        floor = 1
        units = "FEET"
    """)
    cfg = load_store(path)
    assert [p.id for p in cfg.floorplans] == ["g_643451796760560979", "D635A61B06673775ADFF61D70B55785C"]
    g = cfg.floorplans[0]
    assert g.name == "Ground" and g.floor == 0 and g.transform.units == "pixels"
    assert cfg.floorplans[1].floor == 1 and cfg.floorplans[1].transform.units == "feet"


def test_floorplan_errors_name_file_and_field(tmp_path):
    path = write_store(tmp_path, broker_url="mqtt://127.0.0.1:1883", toml_extra="""
        [[floorplans]]
        units = "pixels"

        [[floorplans]]
        id = "a"
        units = "cubits"
        origin = [1]
        rotation = "left"

        [[floorplans]]
        id = "a"

        [sources.ble]
        path_loss_exponent = 0.5

        [sources.meraki]
        secret = "s"
        validator = "v"
        aps = { "not-a-mac" = { x = 1, y = 2 }, "AA:BB:CC:DD:EE:FF" = { x = 1 } }
    """)
    with pytest.raises(ConfigError) as ei:
        load_store(path)
    text = str(ei.value)
    assert str(path) in text
    for needle in ("[[floorplans]] #0: field 'id'", "field 'scale'", "field 'units'", "field 'origin'",
                   "field 'rotation'", "duplicate floor plan id", "[sources.ble]: field 'path_loss_exponent'",
                   '"not-a-mac"', "field 'y': is required"):
        assert needle in text, needle

"""parse_layout builds simple shapes in bulk: same results and errors as one by one."""

from __future__ import annotations

import pytest
import shapely
import shapely.geometry

from store_config import ConfigError
from store_config.load import parse_layout
from store_config.model import Anchor

ANCHOR = Anchor(lat=49.1875, lon=16.6130, bearing=12.5)


def feat(fid, geom, **props):
    return {"type": "Feature", "properties": {"id": fid, **props}, "geometry": geom}


def poly(*rings):
    return {"type": "Polygon", "coordinates": [list(map(list, r)) for r in rings]}


def test_bulk_and_single_shapes_agree():
    geoms = {
        "box": poly([(0, 0), (4, 0), (4, 2), (0, 2), (0, 0)]),
        "tri": poly([(20, 0), (24, 0), (22, 3), (20, 0)]),
        "hole": poly([(30, 0), (40, 0), (40, 10), (30, 10), (30, 0)], [(33, 3), (36, 3), (36, 6), (33, 6), (33, 3)]),
        "z": poly([(50, 0, 1), (54, 0, 1), (54, 2, 1), (50, 2, 1), (50, 0, 1)]),
        "multi": {"type": "MultiPolygon", "coordinates": [[[[60, 0], [62, 0], [62, 2], [60, 2], [60, 0]]]]},
    }
    layout = {"type": "FeatureCollection", "frame": "local",
              "features": [feat(k, g) for k, g in geoms.items()]
              + [feat("disc", {"type": "Point", "coordinates": [70, 5]}, radius_m=2.0)]}
    fences, _, _ = parse_layout(layout, file="layout.geojson", anchor=ANCHOR)
    by_id = {f.id: f for f in fences}
    for k, g in geoms.items():
        want = shapely.force_2d(shapely.geometry.shape(g))
        assert shapely.equals(by_id[k].geometry, want), k
        assert not shapely.has_z(by_id[k].geometry)
    assert by_id["disc"].circle == (70.0, 5.0, 2.0)
    assert by_id["disc"].geometry.area == pytest.approx(3.14159 * 4, rel=1e-3)


def test_bulk_shapes_keep_their_errors():
    layout = {"type": "FeatureCollection", "features": [
        feat("metres", poly([(0, 0), (400, 0), (400, 200), (0, 200), (0, 0)])),  # WGS84 expected
        feat("ok", poly([(16.613, 49.1875), (16.6131, 49.1875), (16.6131, 49.1876), (16.613, 49.1876),
                         (16.613, 49.1875)])),
        feat("bowtie", poly([(16.613, 49.1875), (16.6131, 49.1876), (16.6131, 49.1875), (16.613, 49.1876),
                             (16.613, 49.1875)])),
        feat("unclosed", poly([(16.613, 49.1875), (16.6131, 49.1875), (16.6131, 49.1876), (16.613, 49.1876)])),
        feat("noradius", {"type": "Point", "coordinates": [16.613, 49.1875]}),
    ]}
    with pytest.raises(ConfigError) as ei:
        parse_layout(layout, file="layout.geojson", anchor=ANCHOR)
    msgs = {(p.where, p.message.split(" (")[0].split(":")[0]) for p in ei.value.problems}
    assert ('feature "metres"', "longitude/latitude out of range") in msgs
    assert ('feature "bowtie"', "invalid polygon") in msgs
    assert ('feature "unclosed"', "the outer ring is not closed") in msgs
    assert any(w == 'feature "noradius"' for w, _ in msgs)
    assert not any(w == 'feature "ok"' for w, _ in msgs)

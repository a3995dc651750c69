"""`check` refuses what cannot work (issue 25): an unknown key in any file kind
is an error naming the nearest known key, and a promotion that can never match
a fence is an error.  The sample store still passes.  Pure: files in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from store_config import ConfigError, check, load_store, sample_path
from store_config.load import parse_layout, parse_profiles, parse_promotions
from store_config.model import Anchor


@pytest.fixture
def store(tmp_path: Path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(sample_path().parent, dst)
    return dst / "store.toml"


def errors(path: Path) -> list:
    cfg, problems = check(path)
    errs = [p for p in problems if p.severity == "error"]
    assert cfg is None and errs, "expected the configuration to be refused"
    return errs


def one(errs, where, field):
    hits = [p for p in errs if p.where == where and p.field == field]
    assert hits, f"no error at {where} {field} in:\n" + "\n".join(map(str, errs))
    return hits[0]


def edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def test_sample_store_has_no_errors():
    cfg, problems = check(sample_path())
    assert cfg is not None
    assert not [p for p in problems if p.severity == "error"]


def test_promotion_zone_for_zones(store: Path):
    def typo(promos):
        promos[0]["zone"] = promos[0].pop("zones")
    edit_json(store.parent / "promotions.json", typo)
    pid = json.loads((store.parent / "promotions.json").read_text())[0]["id"]
    e = one(errors(store), f'promotion "{pid}"', "zone")
    assert "did you mean `zones`?" in e.message


def test_promotion_variant_typo(store: Path):
    def typo(promos):
        promos[0]["variants"] = [{"id": "A", "titel": "x"}]
    edit_json(store.parent / "promotions.json", typo)
    pid = json.loads((store.parent / "promotions.json").read_text())[0]["id"]
    e = one(errors(store), f'promotion "{pid}" variant #0', "titel")
    assert "did you mean `title`?" in e.message


def test_profile_and_consent_typos(store: Path):
    def typo(profiles):
        profiles[0]["segmnets"] = ["vip"]
        profiles[1]["consent"] = {"ofers": False}
    edit_json(store.parent / "profiles.json", typo)
    profiles = json.loads((store.parent / "profiles.json").read_text())
    errs = errors(store)
    assert "did you mean `segments`?" in one(errs, f'profile "{profiles[0]["device"]}"', "segmnets").message
    assert "did you mean `offers`?" in one(errs, f'profile "{profiles[1]["device"]}"', "ofers").message


def test_layout_feature_knd_for_kind(store: Path):
    def typo(layout):
        props = layout["features"][0]["properties"]
        props["knd"] = props.pop("kind", "aisle")
    edit_json(store.parent / "layout.geojson", typo)
    fid = json.loads((store.parent / "layout.geojson").read_text())["features"][0]["properties"]["id"]
    e = one(errors(store), f'feature "{fid}"', "knd")
    assert "did you mean `kind`?" in e.message


def test_store_toml_key_section_and_anchor(store: Path):
    text = store.read_text().replace("lon = 16.6130", "lng = 16.6130")
    store.write_text(text + '\n[tracking]\ntimout_s = 60\n\n[trackng]\nfusion = false\n')
    errs = errors(store)
    assert "did you mean `lon`?" in one(errs, "[store.anchor]", "lng").message
    assert "did you mean `timeout_s`?" in one(errs, "[tracking]", "timout_s").message
    assert "did you mean `tracking`?" in one(errs, "[trackng]", "").message


def test_store_toml_sources_floorplans_default_acc(store: Path):
    store.write_text(store.read_text() + '\n[sources.merkai]\nsecret = "s"\n'
                     '\n[tracking.default_acc]\nhmtl5 = 20\n'
                     '\n[[floorplans]]\nid = "g"\nrotaton = 90\n')
    errs = errors(store)
    assert "did you mean `meraki`?" in one(errs, "[sources]", "merkai").message
    assert "did you mean `html5`?" in one(errs, "[tracking.default_acc]", "hmtl5").message
    assert "did you mean `rotation`?" in one(errs, '[[floorplans]] "g"', "rotaton").message


def test_no_near_key_lists_the_known_ones(store: Path):
    store.write_text(store.read_text() + '\n[reload]\nxyzzy = 1\n')
    assert "known: poll_s" in one(errors(store), "[reload]", "xyzzy").message


@pytest.mark.parametrize("promo, field, says", [
    ({"id": "nothing", "title": "n"}, "zones", "names no zones, categories or skus"),
    ({"id": "toys", "title": "t", "categories": ["toys"]}, "categories", "matches no fence"),
    ({"id": "unicorn", "title": "u", "skus": ["unicorn-milk"]}, "skus", "matches no fence"),
    ({"id": "linger", "title": "l", "zones": ["aisle-1"], "trigger": "dwell"}, "trigger", "no dwell event"),
])
def test_promotion_that_can_never_match_is_an_error(store: Path, promo, field, says):
    layout = json.loads((store.parent / "layout.geojson").read_text())
    a1 = next(f["properties"] for f in layout["features"] if f["properties"].get("id") == "aisle-1")
    assert a1.get("dwell_s") is None  # the dwell case relies on it
    edit_json(store.parent / "promotions.json", lambda ps: ps.append(promo))
    e = one(errors(store), f'promotion "{promo["id"]}"', field)
    assert says in e.message and "never" in e.message


def test_a_dwell_promotion_with_one_dwell_fence_is_fine(store: Path):
    edit_json(store.parent / "promotions.json",
              lambda ps: ps.append({"id": "mixed", "title": "m", "zones": ["aisle-1", "wine"],
                                    "trigger": "dwell"}))
    layout = json.loads((store.parent / "layout.geojson").read_text())
    assert any(f["properties"].get("id") == "wine" and f["properties"].get("dwell_s")
               for f in layout["features"])
    load_store(store)


def test_bundles_from_central_stay_lenient():
    """A newer central may add keys: a bundle's unknown key is a warning, not a refusal."""
    warnings: list = []
    promos = parse_promotions([{"id": "p", "title": "t", "zones": ["a"], "colour": "red"}], file="bundle",
                              timezone="UTC", warnings=warnings, strict=False)
    assert [p.id for p in promos] == ["p"] and warnings[0].field == "colour"
    parse_profiles([{"device": "d", "nickname": "x"}], file="bundle", warnings=warnings, strict=False)
    layout = {"type": "FeatureCollection", "frame": "local", "features": [
        {"type": "Feature", "properties": {"id": "a", "kind": "aisle", "fill": "#fff"},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]}}]}
    parse_layout(layout, file="bundle", anchor=Anchor(49.0, 16.0, 0.0), strict=False, warnings=warnings)
    assert [w.field for w in warnings] == ["colour", "nickname", "fill"]
    with pytest.raises(ConfigError):
        parse_layout(layout, file="layout", anchor=Anchor(49.0, 16.0, 0.0))

"""`edge-agent where` (a point in both frames, zones innermost first) and
`run` refusing what `check` calls an error, in one line.  No broker."""

from __future__ import annotations

import json
import shutil

import pytest

from edge_agent.commands.cli import main
from store_config import sample_path


def test_where_local_point(capsys):
    assert main(["where", "--config", str(sample_path()), "--x", "17", "--y", "12"]) == 0
    out = capsys.readouterr().out
    assert "x 17, y 12" in out and "lat 49.18" in out and "lon 16.61" in out
    assert "zones:  aisle-2 (aisle), grocery (section)" in out


def test_where_round_trips_through_wgs84(capsys):
    assert main(["where", "--config", str(sample_path()), "--x", "6", "--y", "10", "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert [z["id"] for z in a["zones"]] == ["produce", "fresh"]  # innermost first
    assert main(["where", "--config", str(sample_path()), "--lat", str(a["lat"]), "--lon", str(a["lon"]),
                 "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert abs(b["x"] - 6) < 0.01 and abs(b["y"] - 10) < 0.01 and b["zones"] == a["zones"]


def sample_with(tmp_path, old: str, new: str):
    """A copy of the sample store whose store.toml has ``old`` replaced by ``new``; its path."""
    d = tmp_path / "store"
    shutil.copytree(sample_path().parent, d)
    toml = d / "store.toml"
    toml.write_text(toml.read_text().replace(old, new))
    return toml


def test_where_outside_and_without_a_point(capsys):
    assert main(["where", "--config", str(sample_path()), "--x", "-50", "--y", "-50"]) == 0
    assert "outside every fence" in capsys.readouterr().out
    assert main(["where", "--config", str(sample_path()), "--x", "1"]) == 2


def test_run_refuses_a_check_error_in_one_line(tmp_path, capsys):
    toml = sample_with(tmp_path, "lon = 16.6130", "lng = 16.6130")
    assert main(["check", "--config", str(toml)]) == 1
    assert "did you mean `lon`?" in capsys.readouterr().out
    assert main(["run", "--config", str(toml), "--broker", "mqtt://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("edge-agent: configuration refused:") and "edge-agent check --config" in err


def test_every_command_refuses_a_broken_or_missing_config_in_one_line(tmp_path, capsys):
    """`where`, `qr`, `watch`, `ping`, `action` and `simulate` refuse a config as `run`
    does: one line naming the file and the first error, and where `check` lists them all."""
    toml = sample_with(tmp_path, "timezone", "timezon")
    for config in (toml, tmp_path / "missing.toml"):
        for argv in (["where", "--x", "6", "--y", "10"], ["qr", "--out", str(tmp_path / "qr")],
                     ["watch"], ["ping", "--device", "d", "--x", "6", "--y", "10"],
                     ["action", "--device", "d", "--offer", "o_1", "apply"], ["simulate"]):
            with pytest.raises(SystemExit) as exited:
                main([argv[0], "--config", str(config), *argv[1:]])
            assert exited.value.code == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, (argv, err)
            assert err.startswith(f"edge-agent: configuration refused: {config}"), err
            assert f"`edge-agent check --config {config}` lists every error" in err, err


def test_a_broker_url_without_its_scheme_says_what_to_write(tmp_path, capsys):
    """`--broker localhost:1883` (and the same in [mqtt] url) is read as scheme
    'localhost'; the refusal says to write mqtt://localhost:1883, not 'not localhost://'."""
    for url in ("localhost:1883", "127.0.0.1:1883"):
        assert main(["run", "--config", str(sample_path()), "--broker", url]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"edge-agent: --broker {url}: no scheme: write mqtt://{url} (mqtts:// for TLS)", err
    toml = sample_with(tmp_path, 'url = "mqtt://127.0.0.1:1883"', 'url = "localhost:1883"')
    assert main(["check", "--config", str(toml)]) == 1
    assert "[mqtt]: field 'url': no scheme: write mqtt://localhost:1883" in capsys.readouterr().out

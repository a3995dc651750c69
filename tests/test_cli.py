"""The CLI: its reference (docs/cli.md) is complete and current, `check` reports and exits right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.commands.cli import markdown_help
from store_config import sample_path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_generated_and_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_cli_docs import PATH, render

    assert PATH == ROOT / "docs" / "cli.md"
    page = PATH.read_text()
    assert page.count("<!-- cli-reference:start -->") == 1
    assert render(page) == page, "docs/cli.md is stale: run `make docs`"
    for cmd in ("run", "check", "demo", "simulate", "audit"):
        assert f"### `edge-agent {cmd}`" in markdown_help()


def test_check_sample_passes_and_broken_config_fails(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(sample_path()), "--tech", "uwb"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 errors" in ok.stdout
    (tmp_path / "store.toml").write_text('[store]\nid = "X"\nlayout = "missing.geojson"\n')
    bad = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(tmp_path / "store.toml")],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "error:" in bad.stdout and "store.toml" in bad.stdout


def test_watch_ping_and_action_refuse_a_bad_or_unreachable_broker_in_one_line():
    """A newcomer's first `watch` or `ping` against a broker that is not up, or a URL
    without its scheme, is one line naming the flag and exit status 2, not a traceback."""
    from tests.conftest import free_port

    down = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    cases = [
        (["watch", "--broker", down, "--store", "S042"], down),
        (["ping", "--broker", down, "--store", "S042", "--device", "d", "--x", "6", "--y", "10"], down),
        (["action", "--broker", down, "--store", "S042", "--device", "d", "--offer", "o_1", "apply"], down),
        (["ping", "--broker", "127.0.0.1:1883", "--store", "S042", "--device", "d", "--x", "6", "--y", "10"],
         "127.0.0.1:1883"),
    ]
    for argv, url in cases:
        r = subprocess.run([sys.executable, "-m", "edge_agent", *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("edge-agent: --broker ") and url in lines[0], lines


@pytest.mark.broker
def test_watch_and_ping_log_in_with_the_configs_username_and_password(tmp_path, mosquitto_factory):
    """On a gateway set up as the README says (allow_anonymous false, the agent's login in
    [mqtt]), `watch --config` and `ping --config` log in as the agent does; a wrong password
    is one line naming [mqtt] and exit status 2, not a silent hang or a false 'published'."""
    from tests.conftest import write_store

    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "edge-agent", "agent-pw"], check=True, capture_output=True)
    broker = mosquitto_factory(listener_conf=f"listener {{port}} 127.0.0.1\nallow_anonymous false\n"
                                             f"password_file {passwd}\n")

    def store(name: str, password: str) -> str:
        path = write_store(tmp_path / name, broker_url=broker.url, store_id="S042")
        path.write_text(path.read_text().replace(
            f'url = "{broker.url}"', f'url = "{broker.url}"\nusername = "edge-agent"\npassword = "{password}"'))
        return str(path)

    good, bad = store("good", "agent-pw"), store("bad", "wrong")
    cli = [sys.executable, "-m", "edge_agent"]
    ping = ["ping", "--device", "my-phone", "--x", "6", "--y", "10"]
    watch = subprocess.Popen([*cli, "watch", "--config", good, "--count", "1"], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert watch.stderr.readline().startswith("watching store/S042/# on ")  # subscribed
        sent = subprocess.run([*cli, *ping, "--config", good], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        out, _ = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert watch.returncode == 0
    assert "ping/uwb/my-phone" in out and '"x": 6.0' in out
    for argv in ([*ping, "--config", bad], ["watch", "--config", bad]):
        r = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert "published" not in r.stdout
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "[mqtt]" in lines[0] and "refused" in lines[0], lines

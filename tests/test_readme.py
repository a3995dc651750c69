"""The README's "Your first offer by hand", run as written.

The ```sh blocks under that heading are the test: terminal 1 (copy the
sample, point it at the broker, check, run), terminal 2 (watch), terminal 3
(ping), then the apply.  Only what the README documents as a variable is
set by the test: ``BROKER`` (a fresh Mosquitto on a free port, so no retained
message of another test is mistaken for this agent's), ``HTTP`` (a free
port) and ``OFFER`` (the offer_id watch printed).  The commands run in a
scratch directory laid out like a checkout after ``make demo``:
``store_config`` and ``.venv/bin/edge-agent`` (this interpreter, this tree's
code).  Synchronisation is on watch's output lines, with time-outs.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import free_port

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Your first offer by hand"


def walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text()
    assert HEADING in text, "the README lost its walkthrough"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```", section, flags=re.S | re.M)


def assign(block: str, **values: str) -> str:
    """Set the block's documented variables (``NAME=value  # comment`` lines) to the test's values."""
    for name, value in values.items():
        block, n = re.subn(rf"^{name}=\S+", lambda _: f"{name}={value}", block, flags=re.M)
        assert n == 1, f"the README's block no longer sets {name}:\n{block}"
    return block


class Terminal:
    """A shell running one README block, its stdout read line by line."""

    def __init__(self, block: str, cwd: Path, env: dict[str, str], name: str):
        self.stderr = cwd / f"{name}.stderr"  # a file, not a pipe: the agent's log never blocks it
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(["bash", "-eu", "-c", block], cwd=cwd, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 30.0, *, others: list[Terminal] = ()) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for t in (self, *others):
                if t.proc.poll() not in (None, 0):
                    raise AssertionError(f"a command exited {t.proc.returncode}:\n{t.stderr.read_text()}")
            try:
                line = self.lines.get(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"no line matching {pattern!r} in {timeout} s; saw:\n"
                                         + "\n".join(self.seen)) from None
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.reader.join(10)  # EOF once the shell is gone
        self.proc.stdout.close()


def payload(line: str) -> dict:
    return json.loads(line[line.index("{"):])


def test_first_offer_by_hand_as_written(mosquitto_factory, tmp_path):
    blocks = walkthrough()
    assert len(blocks) == 4, "expected four ```sh blocks: the agent, watch, ping, apply"
    agent_block, watch_block, ping_block, apply_block = blocks
    assert "edge-agent run" in agent_block and "edge-agent watch" in watch_block
    assert "edge-agent ping" in ping_block and "--x 6 --y 10" in ping_block
    broker = mosquitto_factory()

    # A checkout as `make demo` leaves it: the sample store and .venv/bin/edge-agent.
    (tmp_path / "store_config").symlink_to(ROOT / "store_config")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    exe = tmp_path / ".venv" / "bin" / "edge-agent"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edge_agent "$@"\n')
    exe.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

    agent = Terminal(assign(agent_block, BROKER=broker.url, HTTP=f"127.0.0.1:{free_port()}"), tmp_path, env,
                     "agent")
    watch = None
    try:
        agent.expect(r"my-store/store.toml: store S042 .*: 0 errors")  # terminal 1 copied and checked the store
        watch = Terminal(watch_block, tmp_path, env, "watch")
        watch.expect(r"^\S+\s+status\s+online$", others=[agent])  # the agent is up and subscribed

        ping = subprocess.run(["bash", "-eu", "-c", ping_block], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=60)
        assert ping.returncode == 0, ping.stderr

        offer = payload(watch.expect(r"^\S+\s+offer/my-phone\s", others=[agent]))
        assert offer["promotion_id"] == "produce-welcome" and offer["zone"] == "produce"
        assert offer["offer_id"].startswith("o_")
        event = payload(watch.expect(r'^\S+\s+event/my-phone\s+\{"event": "enter", "zone": "produce"', others=[agent]))
        assert event["event"] == "enter" and event["zone"] == "produce"

        applied = subprocess.run(["bash", "-eu", "-c", assign(apply_block, OFFER=offer["offer_id"])],
                                 cwd=tmp_path, env=env, text=True, capture_output=True, timeout=30)
        assert applied.returncode == 0, applied.stderr
        code = payload(watch.expect(r"^\S+\s+offer/my-phone\s+\{\"offer_id\": \"o_[0-9a-f]+\", \"code\"",
                                    others=[agent]))
        assert code["offer_id"] == offer["offer_id"] and len(code["code"]) >= 8
        # What the README says comes next: the phone stays in `fresh`, and its dwell offer arrives unprompted
        # (dwell_s 20 after the enter).
        section = (ROOT / "README.md").read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]
        assert "nothing new is offered at once" in section and "`fresh-recipe`" in section
        dwell = payload(watch.expect(r'^\S+\s+offer/my-phone\s+\{"offer_id": "o_[0-9a-f]+", "promotion_id"',
                                     timeout=60, others=[agent]))
        assert (dwell["promotion_id"], dwell["zone"]) == ("fresh-recipe", "fresh")
    finally:
        for t in (watch, agent):
            if t is not None:
                t.stop()

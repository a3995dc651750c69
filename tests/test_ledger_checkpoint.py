"""The ledger's WAL is checkpointed from a thread of its own, never inside a commit on the loop."""

from __future__ import annotations

import sqlite3

from edge_agent.storage.ledger import AUTOCHECKPOINT_SAFETY_PAGES, Ledger

PAGE = 4096
FRAME = PAGE + 24  # a WAL frame: its header and one page


def _write_pages(led: Ledger, commits: int) -> None:
    """``commits`` commits of one ~5 KB outbox event each (two pages or more apiece)."""
    for i in range(commits):
        led.begin()
        led.event("bulk", float(i), None, blob="x" * 5000)
        led.commit()


def _wal_frames(led: Ledger) -> int:
    return (led.path.with_name(led.path.name + "-wal")).stat().st_size // FRAME


def test_commits_never_checkpoint_when_the_thread_does(tmp_path):
    led = Ledger(tmp_path / "edge.sqlite3", store_id="S1")
    led.checkpoint_in_thread(interval_s=3600.0)  # the thread does not come round during this test
    try:
        assert led.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTOCHECKPOINT_SAFETY_PAGES
        _write_pages(led, 700)
        # SQLite's own checkpoint (1,000 pages by default) would have started the WAL over
        # inside one of these commits: every frame is still there instead
        assert _wal_frames(led) > 1400
    finally:
        led.close()
    assert led.checkpointer is None


def test_the_thread_copies_the_wal_into_the_database(tmp_path):
    led = Ledger(tmp_path / "edge.sqlite3", store_id="S1")
    led.checkpoint_in_thread(interval_s=0.005)
    ck = led.checkpointer
    try:
        _write_pages(led, 300)
        for _ in range(2):  # the second run began after the last commit
            ck.ran.clear()
            assert ck.ran.wait(10)
        other = sqlite3.connect(led.path)
        try:
            busy, log_frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            other.close()
        assert busy == 0 and log_frames == copied  # nothing left for anyone else to copy
        assert ck.runs >= 2
    finally:
        led.close()
    assert not ck.thread.is_alive()
    # what the thread copied is the ledger: a fresh connection reads every event
    conn = sqlite3.connect(tmp_path / "edge.sqlite3")
    try:
        assert conn.execute("SELECT count(*) FROM outbox WHERE kind = 'bulk'").fetchone()[0] == 300
    finally:
        conn.close()


def test_a_ledger_without_the_thread_keeps_sqlites_own_checkpoint(tmp_path):
    """Tools and tests that open the ledger alone (``edge-agent audit``, ``report``) are as before."""
    led = Ledger(tmp_path / "edge.sqlite3", store_id="S1")
    try:
        assert led.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        _write_pages(led, 700)
        assert _wal_frames(led) < 1100
    finally:
        led.close()

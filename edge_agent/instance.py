"""One agent per data dir: an exclusive lock on ``{data dir}/agent.lock``.

A second agent on the same data dir (the same store) would take over the
live agent's broker session (same client id) and write the same SQLite
file; it stops at once instead, naming the other process, before it
touches the broker.  The lock is ``flock``: the kernel drops it when the
process dies, so a ``kill -9`` never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from store_config.model import EdgeError


class InstanceLocked(EdgeError):
    """Another agent already serves this data dir."""


def lock_data_dir(data: Path) -> int:
    """Take the data dir's lock; returns the file descriptor to keep open (and
    close to release).  Raises :class:`InstanceLocked` when another process has it."""
    path = Path(data) / "agent.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise InstanceLocked(f"another edge-agent (pid {other}) is already serving data dir {data}; "
                             f"stop it first (or give this one its own [data] dir)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases the flock

"""Keyed pseudonyms for device ids (HMAC-SHA256 with a per-store secret).

The secret lives in ``{data_dir}/pseudonym.key`` (created on first start,
mode 0600).  Back it up with the data directory: losing it gives every
device a new pseudonym (central sees them as new devices) and reshuffles
holdout groups.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path


def load_or_create_secret(path: Path) -> bytes:
    """Read the store secret, creating it (32 random bytes, 0600) if missing."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(32)
    write_atomically(path, data)
    return data


def write_atomically(path: Path, data: bytes) -> None:
    """tmp + fsync + rename + fsync(dir), mode 0600: after a crash the file is
    the old or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Pseudonymizer:
    """``device(raw) -> 'd_' + 26 base32 chars``; stable per store secret."""

    __slots__ = ("_key", "_cache", "_people")

    def __init__(self, secret: bytes):
        self._key = secret
        self._cache: dict[str, str] = {}
        self._people: dict[str, str] = {}  # loyalty id -> person: asked at every transition of a member

    def device(self, raw: str) -> str:
        return self._named(self._cache, b"device:", "d_", raw)

    def person(self, loyalty_id: str) -> str:
        """``'p_' + 26 base32 chars``: the pseudonym of a loyalty id (a person)."""
        return self._named(self._people, b"person:", "p_", loyalty_id)

    def _named(self, cache: dict[str, str], tag: bytes, prefix: str, raw: str) -> str:
        """``prefix`` + 26 base32 chars of the keyed HMAC of ``tag + raw``, remembered (200,000 at most)."""
        p = cache.get(raw)
        if p is None:
            digest = hmac.new(self._key, tag + raw.encode(), hashlib.sha256).digest()
            p = prefix + base64.b32encode(digest[:16]).decode().rstrip("=").lower()
            if len(cache) > 200_000:
                cache.clear()
            cache[raw] = p
        return p

    def fraction(self, *parts: str) -> float:
        """A keyed, uniform value in [0, 1) for holdout assignment."""
        digest = hmac.new(self._key, b"holdout:" + "\x1f".join(parts).encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

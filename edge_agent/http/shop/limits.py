"""Token buckets per key (a device, a client address): ``rate`` per second, ``burst`` deep.

Pure: the time is a parameter.  The table of buckets is bounded: when it
grows past ``max_keys`` the buckets that are full again (idle long enough to
have refilled) are dropped, which forgets nothing a limit depends on.
"""

from __future__ import annotations


class Buckets:
    __slots__ = ("rate", "burst", "max_keys", "_b")

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000):
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._b: dict[str, tuple[float, float]] = {}  # key -> (tokens, time)

    def take(self, key: str, now: float) -> bool:
        """Take one token for ``key`` at ``now``; False when its bucket is empty."""
        tokens, t = self._b.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - t) * self.rate)
        if tokens < 1.0:
            self._b[key] = (tokens, now)
            return False
        if len(self._b) >= self.max_keys and key not in self._b:
            self._prune(now)
        self._b[key] = (tokens - 1.0, now)
        return True

    def _prune(self, now: float) -> None:
        full = [k for k, (tok, t) in self._b.items() if tok + (now - t) * self.rate >= self.burst]
        for k in full:
            del self._b[k]
        if len(self._b) >= self.max_keys:  # all busy: start over rather than grow without bound
            self._b.clear()

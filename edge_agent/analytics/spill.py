"""Group-by with bounded memory: sums per key in a dict, spilled to
hash-partitioned files when the dict grows past a limit (a grace hash
aggregation, as databases do it).

Keys are ``(int, int, str)`` — a cell, an arm and a person — and values
``[exposed, converted, revenue, baskets]``, merged by ``max, max, +, +``.
While the keys fit (``limit`` of them), nothing touches the disk.  Past it,
every key goes to one of :data:`FANOUT` partition files by a hash of its
person, and the dict starts empty again; :meth:`Groups.items` then merges
one partition at a time, and a partition still larger than the limit is
partitioned again with another salt.  Peak memory: about ``limit`` keys,
whatever the number of events.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

FANOUT = 16  # partitions per spill: four bits of the person's hash per level
MAX_LEVEL = 15  # 64-bit hashes: a partition this deep is merged whole, however big

Key = tuple[int, int, str]

__all__ = ["Groups", "FANOUT"]


def _merge(into: list, v: list) -> None:
    if v[0] > into[0]:
        into[0] = v[0]
    if v[1] > into[1]:
        into[1] = v[1]
    into[2] += v[2]
    into[3] += v[3]


class Groups:
    """Per-key sums, spilled to ``tmpdir`` past ``limit`` keys."""

    def __init__(self, *, limit: int = 200_000, tmpdir: str | Path | None = None):
        self.limit = max(1, limit)
        self.tmpdir = tmpdir
        self.d: dict[Key, list] = {}
        self._dir: tempfile.TemporaryDirectory | None = None
        self._parts: list | None = None
        self.spills = 0  # how many times the dict was written out (for the benchmark and the tests)

    def add(self, key: Key, exposed: int, converted: int, revenue: float, baskets: int) -> None:
        v = self.d.get(key)
        if v is None:
            self.d[key] = [exposed, converted, revenue, baskets]
            if len(self.d) > self.limit:
                self._spill()
        else:
            if exposed > v[0]:
                v[0] = exposed
            if converted > v[1]:
                v[1] = converted
            v[2] += revenue
            v[3] += baskets

    def _spill(self) -> None:
        if self._parts is None:
            self._dir = tempfile.TemporaryDirectory(prefix="chain-report-", dir=self.tmpdir)
            self._parts = [open(os.path.join(self._dir.name, f"p{i}"), "w", encoding="utf-8",
                                buffering=1 << 20) for i in range(FANOUT)]
        _write(self.d, self._parts, 0)
        self.d = {}
        self.spills += 1

    def items(self) -> Iterator[tuple[Key, list]]:
        """Every key once, its values merged (the partitions one at a time)."""
        if self._parts is None:
            yield from self.d.items()
            self.d = {}
            return
        _write(self.d, self._parts, 0)
        self.d = {}
        paths = [f.name for f in self._parts]
        for f in self._parts:
            f.close()
        self._parts = []
        try:
            for p in paths:
                yield from self._merge_file(p, 1)
        finally:
            self.close()

    def _merge_file(self, path: str, level: int) -> Iterator[tuple[Key, list]]:
        d: dict[Key, list] = {}
        sub: list | None = None
        with open(path, encoding="utf-8", buffering=1 << 20) as f:
            for line in f:
                c, a, person, e, cv, r, b = line.rstrip("\n").split("\t")
                key = (int(c), int(a), person)
                v = [int(e), int(cv), float(r), int(b)]
                old = d.get(key)
                if old is None:
                    d[key] = v
                    if len(d) > self.limit and level < MAX_LEVEL:  # still too big: partition again, other bits
                        if sub is None:
                            sub = [open(f"{path}.{i}", "w", encoding="utf-8", buffering=1 << 20)
                                   for i in range(FANOUT)]
                        _write(d, sub, level)
                        d = {}
                        self.spills += 1
                else:
                    _merge(old, v)
        os.unlink(path)
        if sub is None:
            yield from d.items()
            return
        _write(d, sub, level)
        names = [s.name for s in sub]
        for s in sub:
            s.close()
        for n in names:
            yield from self._merge_file(n, level + 1)

    def close(self) -> None:
        if self._parts:
            for f in self._parts:
                f.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _write(d: dict[Key, list], parts: list, level: int) -> None:
    """Each level partitions on its own four bits of the person's hash."""
    shift = 4 * level
    for (c, a, person), (e, cv, r, b) in d.items():
        parts[(hash(person) >> shift) & 15].write(f"{c}\t{a}\t{person}\t{e}\t{cv}\t{r!r}\t{b}\n")

"""The chain report: the campaign table across every store, from central's
event exports (JSON Lines, one outbox event a line, as the uplinks send
them; ``.gz`` allowed), streamed in one pass with bounded memory.

Which events count (every other kind is skipped after parsing):

``offer``        ``offered`` + 1; the ``person`` joins the treated arm of
                 (store, promotion, variant)
``would_offer``  the person joins the control arm
``redemption``   ``applied`` + 1 (the shopper applied the offer: a code)
``conversion``   ``redeemed`` + 1 (a till burnt the code): the person
                 converted (treated); its ``basket_total`` is what a
                 ``pct`` discount is taken of
``purchase``     for each of its ``attributed`` ``{promotion_id, variant,
                 arm}``: the person converted, and the ``basket_total`` adds
                 to their revenue in that arm
``suppressed``   ``suppressed[reason]`` + 1

A person counts only in an arm they were exposed in (an offer or a
would-offer in the export): conversions and purchases of people whose
exposure lies outside the export are left out.  Variants are ``"-"`` when
null.  Each store is a stratum (see :mod:`.stats`); ``--by-store`` adds the
per-store tables.  ``discount_cost`` and ``incremental_margin`` need the
promotions (``--promotions promotions.json``): without them they are null.

Memory: the per-cell counters (stores × promotions × variants) and the
per-person sums of :class:`~.spill.Groups`, which spill to disk past a limit
— flat in the number of events.
"""

from __future__ import annotations

import gzip
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import orjson

from .spill import Groups
from .stats import Arm, discount_of
from .table import variant_row

NO_VARIANT = "-"
TREATED, CONTROL = 0, 1

__all__ = ["ChainReport", "read_lines", "chain_report"]


class ExportError(ValueError):
    """An export that cannot be read (missing file, broken gzip)."""


def read_lines(paths: Iterable[str | Path]) -> Iterator[bytes]:
    """Every line of every export, in order (gzip by its magic bytes)."""
    for p in paths:
        try:
            raw = open(p, "rb")
        except OSError as exc:
            raise ExportError(f"cannot read {p}: {exc.strerror or exc}") from None
        with raw:
            head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
            f = io.BufferedReader(gzip.GzipFile(fileobj=raw), buffer_size=1 << 20) if head == b"\x1f\x8b" else raw
            try:
                first = f.readline()
                if first.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows tools write one)
                    first = first[3:]
                if first:
                    yield first
                yield from f
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise ExportError(f"{p}: {exc}") from None


class ChainReport:
    """Feed it events (:meth:`add_line` or :meth:`add`), then :meth:`result`."""

    def __init__(self, *, max_people: int = 200_000, tmpdir: str | Path | None = None):
        self.cells: dict[tuple[str, str, str], int] = {}  # (store, promotion, variant) -> index
        self.keys: list[tuple[str, str, str]] = []
        self.counts: list[list] = []  # per cell: [offered, applied, redeemed, redemption basket sum]
        self.suppressed: dict[tuple[str, str], dict[str, int]] = {}
        self.people = Groups(limit=max_people, tmpdir=tmpdir)
        self.lo: float | None = None
        self.hi: float | None = None
        self.events = 0
        self.bad = 0  # lines that are not a JSON object

    def _cell(self, store: str, pid: str, variant: str | None) -> int:
        key = (store, pid, variant or NO_VARIANT)
        i = self.cells.get(key)
        if i is None:
            i = self.cells[key] = len(self.keys)
            self.keys.append(key)
            self.counts.append([0, 0, 0, 0.0])
        return i

    def add_line(self, line: bytes) -> None:
        if _TRANSITION in line:  # most of an export, never counted: skipped unparsed (compact JSON only;
            self.events += 1  # a spaced-out line is parsed and skipped by its kind, same answer)
            return
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                self.bad += 1
            return
        if isinstance(ev, dict):
            self.add(ev)
        else:
            self.bad += 1

    def add(self, ev: Mapping[str, Any]) -> None:
        """One event (a dict as the uplink sent it)."""
        self.events += 1
        kind = ev.get("kind")
        if kind not in _KINDS:
            return
        ts = ev.get("ts")
        if isinstance(ts, (int, float)):
            if self.lo is None or ts < self.lo:
                self.lo = ts
            if self.hi is None or ts > self.hi:
                self.hi = ts
        store = str(ev.get("store"))
        pid = ev.get("promotion_id")
        person = ev.get("person") or ev.get("device")
        if kind == "purchase":
            if not isinstance(person, str):
                return
            total = ev.get("basket_total")
            total = float(total) if isinstance(total, (int, float)) and not isinstance(total, bool) else None
            for a in ev.get("attributed") or ():
                if not isinstance(a, dict) or not isinstance(a.get("promotion_id"), str):
                    continue
                c = self._cell(store, a["promotion_id"], a.get("variant"))
                arm = TREATED if a.get("arm") == "treated" else CONTROL
                self.people.add((c, arm, _safe(person)), 0, 1, total or 0.0, 1 if total is not None else 0)
            return
        if not isinstance(pid, str):
            return
        if kind == "suppressed":
            reasons = self.suppressed.setdefault((store, pid), {})
            r = str(ev.get("reason"))
            reasons[r] = reasons.get(r, 0) + 1
            return
        c = self._cell(store, pid, ev.get("variant"))
        if kind == "offer":
            self.counts[c][0] += 1
            if isinstance(person, str):
                self.people.add((c, TREATED, _safe(person)), 1, 0, 0.0, 0)
        elif kind == "would_offer":
            if isinstance(person, str):
                self.people.add((c, CONTROL, _safe(person)), 1, 0, 0.0, 0)
        elif kind == "redemption":
            self.counts[c][1] += 1
        else:  # conversion
            row = self.counts[c]
            row[2] += 1
            total = ev.get("basket_total")
            if isinstance(total, (int, float)) and not isinstance(total, bool):
                row[3] += float(total)
            if isinstance(person, str):
                self.people.add((c, TREATED, _safe(person)), 0, 1, 0.0, 0)

    def result(self, *, promotions: Mapping[str, Any] | None = None, by_store: bool = False) -> dict[str, Any]:
        """The report: ``{"since", "until", "stores", "promotions"}`` (+ ``"by_store"``)."""
        arms: dict[tuple[int, int], Arm] = {}
        for (c, arm, _person), (exposed, converted, revenue, baskets) in self.people.items():
            if not exposed:
                continue
            a = arms.get((c, arm))
            if a is None:
                a = arms[(c, arm)] = Arm()
            a.add(bool(converted), revenue, baskets)
        stores = sorted({k[0] for k in self.keys} | {s for s, _ in self.suppressed})
        by_pv: dict[tuple[str, str], list[int]] = {}
        for i, (store, pid, variant) in enumerate(self.keys):
            by_pv.setdefault((pid, variant), []).append(i)

        def table(cells_of: Mapping[tuple[str, str], list[int]], supp: Iterable[tuple[str, dict]]) -> dict:
            out: dict[str, Any] = {}
            for (pid, variant), idx in sorted(cells_of.items()):
                promo = promotions.get(pid) if promotions is not None else None
                offered = sum(self.counts[i][0] for i in idx)
                applied = sum(self.counts[i][1] for i in idx)
                redeemed = sum(self.counts[i][2] for i in idx)
                cost = None
                if promo is not None:
                    d = getattr(promo, "discount", None)
                    if d is None:
                        cost = 0.0
                    elif d.amount is not None:
                        cost = d.amount * redeemed
                    else:
                        cost = discount_of({"pct": d.pct}, sum(self.counts[i][3] for i in idx))
                strata = [(arms.get((i, TREATED), Arm()), arms.get((i, CONTROL), Arm())) for i in idx]
                row = variant_row(offered=offered, applied=applied, redeemed=redeemed, strata=strata,
                                  discount_cost=cost, margin_pct=getattr(promo, "margin_pct", None))
                out.setdefault(pid, {"variants": {}, "suppressed": {}})["variants"][variant] = row
            merged: dict[str, dict[str, int]] = {}
            for pid, reasons in supp:
                m = merged.setdefault(pid, {})
                for r, n in reasons.items():
                    m[r] = m.get(r, 0) + n
            for pid, reasons in merged.items():
                out.setdefault(pid, {"variants": {}, "suppressed": {}})["suppressed"] = dict(sorted(reasons.items()))
            return dict(sorted(out.items()))

        rep: dict[str, Any] = {"since": _iso(self.lo), "until": _iso(self.hi), "stores": len(stores),
                               "promotions": table(by_pv, ((p, r) for (_s, p), r in self.suppressed.items()))}
        if by_store:
            rep["by_store"] = {}
            for store in stores:
                cells = {}
                for i, (s, pid, variant) in enumerate(self.keys):
                    if s == store:
                        cells[(pid, variant)] = [i]
                supp = ((p, r) for (s, p), r in self.suppressed.items() if s == store)
                rep["by_store"][store] = {"promotions": table(cells, supp)}
        return rep


_TRANSITION = b'"kind":"transition"'  # only a top-level kind: nested objects say alert_kind, never kind
_KINDS = frozenset({"offer", "would_offer", "redemption", "conversion", "purchase", "suppressed"})


def _safe(person: str) -> str:
    """Spill files are tab-separated lines: a person pseudonym never holds either."""
    return person.replace("\t", " ").replace("\n", " ") if "\t" in person or "\n" in person else person


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def chain_report(paths: Iterable[str | Path], *, promotions: Mapping[str, Any] | None = None,
                 by_store: bool = False, max_people: int = 200_000, tmpdir: str | Path | None = None
                 ) -> dict[str, Any]:
    """Read the exports and answer the chain's table (see the module doc)."""
    agg = ChainReport(max_people=max_people, tmpdir=tmpdir)
    add = agg.add_line
    for line in read_lines(paths):
        add(line)
    return agg.result(promotions=promotions, by_store=by_store)

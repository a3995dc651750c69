"""What a shelf check-in tells the shopper when no offer can come of it.  Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from edge_agent.pipeline.decisions import in_window, promotion_matches

__all__ = ["checkin_note"]


def _hours(promo) -> str:
    return ", ".join(f"{s // 60:02d}:{s % 60:02d}–{e // 60:02d}:{e % 60:02d}" for s, e in promo.hours)


def checkin_note(fence, promotions: Iterable, local: datetime, *, stopped=lambda promo: None) -> str | None:
    """None when an ``enter`` promotion of the fence is running now (an offer
    may come); else why none will: no promotion here, only ones after a dwell,
    or none running now (with the hours or dates of the next)."""
    mine = [p for p in promotions if promotion_matches(fence, p)]
    name = fence.name or fence.id
    if not mine:
        return f"Nothing is on offer at {name}."
    enter = [p for p in mine if p.trigger == "enter"]
    if not enter:
        return f"Offers at {name} come after you have stayed a while."
    running = [p for p in enter if in_window(p, local) and not p.paused and not stopped(p)]
    if running:
        return None
    for p in enter:
        if p.hours and not stopped(p) and not p.paused:
            return f"Nothing on offer at {name} right now: “{p.title}” runs {_hours(p)}."
        if p.starts is not None and local.timestamp() < p.starts.timestamp():
            return f"Nothing on offer at {name} yet: “{p.title}” starts {p.starts:%d %b %H:%M}."
    return f"Nothing on offer at {name} right now."

"""Central's model scores: ``scores.json`` or a bundle's ``scores``.  Pure.

``{"model": "propensity-2026-12-01", "scores": {"<segment or *>": {"<promotion>": 0.031, ...}}}``
— a score is a finite number >= 0 (a promotion's chance of converting, say);
the ranking multiplies it by the promotion's value (see ``edge_agent.pipeline.decisions``).
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

from ._checks import Collector, raise_if, type_name
from .model import Scores

__all__ = ["parse_scores"]


def parse_scores(obj: Any, *, file: str) -> Scores:
    """Validate a scores document; raises ``ConfigError`` naming the bad entry."""
    c = Collector(file)
    if not isinstance(obj, dict):
        c.err("scores", "", f"must be an object with 'model' and 'scores', not {type_name(obj)}")
        raise_if(c.problems)
    c.unknown_keys(obj, {"model", "scores"}, "scores")
    model = c.string(obj, "model", "scores", required=True, nonempty=True)
    raw = obj.get("scores")
    table: dict[str, Any] = {}
    if not isinstance(raw, dict):
        c.err("scores", "scores", f"must be an object {{segment or '*': {{promotion: score}}}}, not {type_name(raw)}")
    else:
        for seg, row in raw.items():
            if not isinstance(row, dict):
                c.err("scores", seg, f"must be an object {{promotion: score}}, not {type_name(row)}")
                continue
            good = {}
            for pid, v in row.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    c.err(f"scores {seg!r}", pid, f"must be a finite number >= 0, not {v!r}")
                else:
                    good[pid] = float(v)
            table[seg] = MappingProxyType(good)
    raise_if(c.problems)
    assert model is not None
    return Scores(model=model, table=MappingProxyType(table))

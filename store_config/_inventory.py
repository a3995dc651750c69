"""The inventory section: ``inventory.json`` (``{sku: qty}``).  Pure."""

from __future__ import annotations

from typing import Any

from ._checks import Collector, raise_if, type_name

__all__ = ["parse_inventory"]


def parse_inventory(obj: Any, *, file: str) -> dict[str, int]:
    """Parse ``{sku: qty}`` with non-negative integer quantities."""
    c = Collector(file)
    if not isinstance(obj, dict):
        c.err("inventory", "", f"must be an object {{sku: qty}}, not {type_name(obj)}")
        raise_if(c.problems)
    out: dict[str, int] = {}
    for sku, qty in obj.items():
        where = f'sku "{sku}"'
        if not sku.strip():
            c.err(where, "sku", "must not be empty")
            continue
        if isinstance(qty, float) and qty.is_integer():
            qty = int(qty)
        if isinstance(qty, bool) or not isinstance(qty, int) or qty < 0:
            c.err(where, "qty", f"must be a non-negative integer, not {type_name(qty)} {qty!r}")
            continue
        out[sku] = qty
    raise_if(c.problems)
    return out

"""The profiles section: ``profiles.json`` (a list of profile objects) into
``{device: Profile}``.  Pure.
"""

from __future__ import annotations

from typing import Any

from ._checks import Collector, raise_if, type_name, where_obj
from .model import Consent, Problem, Profile

__all__ = ["parse_profiles"]


_PROFILE_KEYS = frozenset({"device", "loyalty_id", "consent", "segments", "loyalty_score", "vip", "first_name", "staff"})
_CONSENT_KEYS = frozenset({"offers", "tracking", "name_to_staff"})


def parse_profiles(obj: Any, *, file: str, warnings: list[Problem] | None = None,
                   strict: bool = True) -> dict[str, Profile]:
    """Parse a list of profile objects into ``{device: Profile}``.  Missing
    consent keys default to offers=True, tracking=True, name_to_staff=False.
    An unknown key is an error naming the nearest known one (``consnet``
    would otherwise leave consent at its default); a warning with
    ``strict=False`` (a bundle from central)."""
    c = Collector(file)
    if not isinstance(obj, list):
        c.err("profiles", "", f"must be a list of profile objects, not {type_name(obj)}")
        raise_if(c.problems)
    out: dict[str, Profile] = {}
    seen: dict[str, int] = {}
    for i, p in enumerate(obj):
        where = where_obj("profile", i, p, "device")
        if not isinstance(p, dict):
            c.err(where, "", f"must be an object, not {type_name(p)}")
            continue
        n_before = len(c.problems)
        c.unknown_keys(p, _PROFILE_KEYS, where, strict=strict)
        device = c.string(p, "device", where, required=True, nonempty=True)
        if device is not None:
            if any(ch in device for ch in "/+#") or any(ch.isspace() for ch in device):
                c.err(where, "device", f"{device!r} must not contain '/', '+', '#' or spaces (used in topics)")
            elif device in seen:
                c.err(where, "device", f"duplicate device {device!r} (also profile #{seen[device]})")
            else:
                seen[device] = i
        loyalty_id = c.string(p, "loyalty_id", where, default=None)
        consent = Consent(offers=True, tracking=True, name_to_staff=False)
        raw = p.get("consent")
        if raw is not None:
            if not isinstance(raw, dict):
                c.err(where, "consent", f"must be an object {{offers, tracking, name_to_staff}}, not {type_name(raw)}")
            else:
                c.unknown_keys(raw, _CONSENT_KEYS, where, strict=strict)
                consent = Consent(
                    offers=c.boolean(raw, "offers", where, default=True),
                    tracking=c.boolean(raw, "tracking", where, default=True),
                    name_to_staff=c.boolean(raw, "name_to_staff", where, default=False),
                )
        segments = c.str_list(p, "segments", where)
        loyalty_score = c.number(p, "loyalty_score", where, default=0.0)
        vip = c.boolean(p, "vip", where)
        first_name = c.string(p, "first_name", where, default=None)
        staff = c.boolean(p, "staff", where)
        if len(c.problems) > n_before or device is None:
            continue
        out[device] = Profile(device=device, loyalty_id=loyalty_id, consent=consent, segments=segments,
                              loyalty_score=loyalty_score, vip=vip, first_name=first_name, staff=staff)
    if warnings is not None:
        warnings.extend(c.warnings)
    raise_if(c.problems)
    return out


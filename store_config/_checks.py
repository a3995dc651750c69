"""Small typed field readers that record problems instead of raising, and the
helpers every section parser shares (:func:`raise_if`, :func:`where_obj`,
:func:`check_timezone`).

Every reader returns the value (or the default when the value is missing or
wrong) and appends a :class:`Problem` to the collector on error, so one pass
over a file reports every problem in it.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from .model import ConfigError, Problem

ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_MISSING = object()

# Spellings difflib cannot match but people write: the key they mean.
SYNONYMS = {"lng": "lon", "long": "lon", "longitude": "lon", "latitude": "lat", "zone": "zones",
            "category": "categories", "sku": "skus", "segment": "segments", "type": "kind"}


def suggest(key: str, known) -> str | None:
    """The known key nearest to ``key`` (a typo, a synonym, another case), or None."""
    known = sorted(known)
    if not known:
        return None
    low = {k.lower(): k for k in known}
    if key.lower() in low:
        return low[key.lower()]
    syn = SYNONYMS.get(key.lower())
    if syn in known:
        return syn
    near = difflib.get_close_matches(key.lower(), list(low), n=1, cutoff=0.6)
    return low[near[0]] if near else None


def unknown_key_message(key: str, known, what: str = "key") -> str:
    """``unknown key; did you mean `zones`?`` or ``unknown key (known: a, b, c)``."""
    near = suggest(key, known)
    if near is not None:
        return f"unknown {what}; did you mean `{near}`?"
    return f"unknown {what} (known: {', '.join(sorted(known))})"


def raise_if(problems: list[Problem]) -> None:
    """Raise :class:`ConfigError` listing ``problems`` when there are any."""
    if problems:
        raise ConfigError(problems)


def where_obj(kind: str, i: int, obj: Any, key: str) -> str:
    """``promotion "p1"`` when ``obj[key]`` is a non-empty string, else ``promotion #i``."""
    if isinstance(obj, dict) and isinstance(obj.get(key), str) and obj[key]:
        return f'{kind} "{obj[key]}"'
    return f"{kind} #{i}"


@functools.lru_cache(maxsize=1)
def _zone_keys() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(tz: Any) -> str | None:
    """Return an error message when ``tz`` is not a valid zoneinfo key."""
    if not isinstance(tz, str) or not tz:
        return f"must be an IANA time zone name such as 'Europe/Prague', not {type_name(tz)}"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown time zone {tz!r} (use an IANA name such as 'Europe/Prague')"
    if tz not in _zone_keys() and tz != "UTC":
        # ZoneInfo accepts some odd keys (e.g. lowercase on case-insensitive
        # file systems); insist on a canonical key.
        return f"unknown time zone {tz!r} (use an IANA name such as 'Europe/Prague')"
    return None


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Collector:
    """Collects problems for one file."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def err(self, where: str, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, where, field, message))

    def warn(self, where: str, field: str, message: str) -> None:
        self.warnings.append(Problem(self.file, where, field, message, severity="warning"))

    # -- readers -----------------------------------------------------------

    def _get(self, obj: dict, key: str, where: str, required: bool):
        if key not in obj or obj[key] is None:
            if required:
                self.err(where, key, "is required")
            return _MISSING
        return obj[key]

    def string(self, obj: dict, key: str, where: str, *, default: Any = None,
               required: bool = False, nonempty: bool = False, choices: tuple[str, ...] | None = None,
               token: bool = False):
        v = self._get(obj, key, where, required)
        if v is _MISSING:
            return default
        if not isinstance(v, str):
            self.err(where, key, f"must be a string, not {type_name(v)}")
            return default
        if nonempty and not v.strip():
            self.err(where, key, "must not be empty")
            return default
        if choices is not None and v not in choices:
            self.err(where, key, f"must be one of {', '.join(repr(c) for c in choices)}, not {v!r}")
            return default
        if token and not (v.isprintable() and not any(ch.isspace() for ch in v)):
            # a Bearer token travels in an Authorization header: a pasted newline or space breaks every request
            self.err(where, key, "must be one word of printable characters (no spaces, tabs or line breaks)")
            return default
        return v

    def boolean(self, obj: dict, key: str, where: str, *, default: bool = False):
        v = self._get(obj, key, where, False)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            self.err(where, key, f"must be true or false, not {type_name(v)}")
            return default
        return v

    def number(self, obj: dict, key: str, where: str, *, default: Any = None, required: bool = False,
               minimum: float | None = None, maximum: float | None = None, positive: bool = False):
        v = self._get(obj, key, where, required)
        if v is _MISSING:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.err(where, key, f"must be a number, not {type_name(v)}")
            return default
        if not math.isfinite(v):
            self.err(where, key, "must be a finite number")
            return default
        if positive and v <= 0:
            self.err(where, key, f"must be > 0, not {v!r}")
            return default
        if minimum is not None and v < minimum:
            self.err(where, key, f"must be ≥ {minimum:g}, not {v!r}")
            return default
        if maximum is not None and v > maximum:
            self.err(where, key, f"must be ≤ {maximum:g}, not {v!r}")
            return default
        return float(v)

    def integer(self, obj: dict, key: str, where: str, *, default: Any = None, required: bool = False,
                minimum: int | None = None, maximum: int | None = None):
        v = self._get(obj, key, where, required)
        if v is _MISSING:
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            self.err(where, key, f"must be an integer, not {type_name(v)}")
            return default
        if minimum is not None and v < minimum:
            self.err(where, key, f"must be ≥ {minimum}, not {v}")
            return default
        if maximum is not None and v > maximum:
            self.err(where, key, f"must be ≤ {maximum}, not {v}")
            return default
        return v

    def str_list(self, obj: dict, key: str, where: str) -> tuple[str, ...]:
        v = self._get(obj, key, where, False)
        if v is _MISSING:
            return ()
        if not isinstance(v, list):
            self.err(where, key, f"must be a list of strings, not {type_name(v)}")
            return ()
        bad = [i for i, s in enumerate(v) if not isinstance(s, str) or not s.strip()]
        if bad:
            self.err(where, key, f"must be a list of non-empty strings (item #{bad[0]} is "
                                 f"{type_name(v[bad[0]])} {v[bad[0]]!r})")
            return ()
        return tuple(v)

    def unknown_keys(self, obj: dict, known: set[str] | frozenset[str], where: str, *,
                     strict: bool = True) -> None:
        """An unknown key is an error naming the nearest known key (``strict``;
        a typo such as ``zone`` for ``zones`` would silently disable what it
        configures), else a warning (a bundle from a newer central)."""
        for k in obj:
            if k not in known:
                msg = unknown_key_message(str(k), known)
                if strict:
                    self.err(where, str(k), msg)
                else:
                    self.warn(where, str(k), msg + " (ignored)")

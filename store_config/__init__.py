"""Store configuration: load, validate and lint a store (``store.toml`` and
the layout, promotions, profiles and inventory files it names).

Pure: no asyncio, no sockets, no clock reads.
"""

from __future__ import annotations

from pathlib import Path

from .lint import lint
from .load import load_store
from .model import ConfigError, Problem, StoreConfig

__all__ = ["load_store", "lint", "check", "sample_path", "ConfigError", "Problem", "StoreConfig"]


def sample_path() -> Path:
    """Path of the sample store's ``store.toml`` (shipped as package data)."""
    return Path(__file__).resolve().parent / "sample" / "store.toml"


def check(path: str | Path, *, tech: str | None = None) -> tuple[StoreConfig | None, list[Problem]]:
    """Load and lint ``path``: ``(config or None, errors + warnings)``.

    Never raises :class:`ConfigError`; the config is None when any error
    was found (then the list holds every error).  ``tech`` narrows the
    fence-size lint to one positioning technology (see :func:`lint`).
    """
    try:
        cfg = load_store(path)
    except ConfigError as exc:
        return None, list(exc.problems)
    return cfg, list(cfg.warnings) + lint(cfg, tech=tech)

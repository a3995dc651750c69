"""Hot reload of the store's files: promotions, profiles, inventory, layout.

Three triggers, one path: the files named by the running config change
(their mtimes are polled every ``[reload] poll_s`` seconds, default 2), the
process gets SIGHUP, or an operator calls ``POST /v1/admin/reload``.  Every
time, ``store.toml`` and every file it names are loaded and validated
*whole* (:func:`store_config.load_store`); a configuration with any error is
refused — each problem is logged with its file, feature and field, and
``edge_config_reloads_total{result="refused"}`` counts it — and the last good
configuration keeps serving.  A good one is swapped in atomically with
``Agent.install``.

Inventory from a file carries the file's mtime as its time, so a newer POS
update over MQTT is not undone by a reload (newest value per sku wins).

Sections that need a restart to change (``[mqtt]``, ``[http]``, ``[data]``)
are logged as such and otherwise ignored until then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Protocol

from store_config import load_store
from store_config.model import ConfigError, StoreConfig

if TYPE_CHECKING:  # pragma: no cover
    from .metrics import Metrics

log = logging.getLogger("edge_agent.reload")

class ReloadHost(Protocol):
    """What reloading uses of the agent (its door): the running config, the
    install of a new one, the inventory merge, the counters, the listeners
    told of a reload, and central's downlink overlay (``sync``)."""

    metrics: Metrics
    listeners: list[Callable[[str, dict], None]]
    sync: Any  # sync.tasks.Sync | None: its ``downlink.overlay`` lays central's bundles over the files

    @property
    def cfg(self) -> StoreConfig: ...

    def install(self, cfg: StoreConfig, *, inventory_ts: float | None = None) -> None: ...

    def merge_inventory(self, items: Any, ts: float | None) -> list[str]: ...


Signature = dict[str, tuple[int, int] | None]
RESTART_ONLY = ("mqtt", "http", "data_dir")


def file_mtime(cfg: StoreConfig, key: str) -> float | None:
    """The mtime (epoch seconds) of one of the config's files, if it exists."""
    path = cfg.files.get(key)
    if not path:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def signature(cfg: StoreConfig) -> Signature:
    """(mtime_ns, size) of every file the config was loaded from."""
    out: Signature = {}
    for path in cfg.files.values():
        try:
            st = os.stat(path)
            out[path] = (st.st_mtime_ns, st.st_size)
        except OSError:
            out[path] = None
    return out


class Reloader:
    """Reloads one agent's configuration from its files."""

    def __init__(self, agent: ReloadHost):
        self.agent = agent
        self._seen: Signature | None = None

    # -- the two halves: load (pure file I/O + validation), apply (loop thread)
    def load(self) -> tuple[StoreConfig | None, list[str]]:
        path = self.agent.cfg.path
        if path is None:
            return None, ["the running configuration was not loaded from files"]
        try:
            return load_store(path), []
        except ConfigError as exc:
            return None, [str(p) for p in exc.problems]

    def apply(self, new: StoreConfig | None, problems: list[str], trigger: str) -> tuple[bool, list[str]]:
        agent = self.agent
        old = agent.cfg
        served = new
        if new is not None and new.store_id == old.store_id:
            # Rules from central's last good bundle stay on top of the files.
            downlink = getattr(getattr(agent, "sync", None), "downlink", None)
            if downlink is not None:
                try:
                    served = downlink.overlay(new)
                except ConfigError as exc:
                    new, problems = None, [f"with the last bundle from central: {p}" for p in exc.problems]
        if new is not None and new.store_id != old.store_id:
            new, problems = None, [f"{old.files.get('store', 'store.toml')}: [store]: field 'id': "
                                   f"a reload cannot change the store id ({old.store_id!r} → {new.store_id!r})"]
        if new is None:
            agent.metrics.config_reloads.inc("refused")
            for p in problems:
                log.error("reload (%s) refused: %s", trigger, p)
            log.error("reload (%s) refused with %d problem(s); config version %s keeps serving",
                      trigger, len(problems), old.version)
            self._tell("refused", old.version, problems)
            return False, problems
        kept = {}
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                log.warning("reload (%s): a change to %s takes effect only after a restart", trigger,
                            "[data] dir" if key == "data_dir" else f"[{key}]")
                kept[key] = getattr(old, key)  # as the warning says: until then, the running values
        if kept:
            served = dataclasses.replace(served, **kept)
        # The file's stock as of its mtime (newest per sku wins, even when
        # nothing else changed: a rewritten file asserts its values anew).
        inv_ts = file_mtime(new, "inventory")
        if inv_ts is not None:
            agent.merge_inventory(new.inventory, inv_ts)
        if served.version == old.version:
            agent.metrics.config_reloads.inc("unchanged")
            self._tell("unchanged", old.version, [])
            return True, []
        agent.install(served)  # inventory already merged above (a bundle's, if any, at its own time)
        agent.metrics.config_reloads.inc("ok")
        log.info("reload (%s): config version %s → %s", trigger, old.version, served.version)
        self._tell("ok", served.version, [])
        return True, []

    def _tell(self, result: str, version: str, problems: list[str]) -> None:
        for fn in self.agent.listeners:
            fn("reload", {"result": result, "version": version, "problems": problems})

    def reload(self, trigger: str = "request") -> tuple[bool, list[str]]:
        """Load and apply now (SIGHUP, admin endpoint); synchronous."""
        self._seen = signature(self.agent.cfg)
        new, problems = self.load()
        return self.apply(new, problems, trigger)

    async def run(self) -> None:
        """Poll the files' mtimes every ``[reload] poll_s``; reload on a change."""
        self._seen = signature(self.agent.cfg)
        while True:
            poll = self.agent.cfg.reload.poll_s
            await asyncio.sleep(poll if poll > 0 else 5.0)
            if poll <= 0:
                continue
            sig = signature(self.agent.cfg)
            if sig == self._seen:
                continue
            self._seen = sig  # a refused version is not retried until the files change again
            try:
                new, problems = await asyncio.to_thread(self.load)
                self.apply(new, problems, "file change")
            except Exception:  # the poller must outlive any surprise
                log.exception("reload after a file change failed")

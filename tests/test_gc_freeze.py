"""`edge-agent run` freezes what start-up built out of the cyclic collector's way;
a config reload unfreezes it, so the replaced config's reference cycles are still collected."""

from __future__ import annotations

import dataclasses
import gc
import weakref

from edge_agent.service import Agent, freeze_heap
from store_config import load_store

from .conftest import write_store


class _Cycle:
    def __init__(self):
        self.me = self  # only the cyclic collector can free it


def test_a_reload_on_a_frozen_heap_collects_the_replaced_configs_cycles(tmp_path):
    cfg = load_store(write_store(tmp_path, broker_url=None))
    agent = Agent(cfg)
    cycle = _Cycle()
    agent.rt.promos["_probe"] = cycle  # reachable from the live config only
    gone = weakref.ref(cycle)
    del cycle
    freeze_heap()
    try:
        assert gc.get_freeze_count() > 0
        agent.install(dataclasses.replace(cfg, version="v2"))
        assert agent.cfg.version == "v2"
        assert gone() is None  # a frozen heap would have kept it for the life of the process
        assert gc.get_freeze_count() > 0  # and what lives on is frozen again
    finally:
        gc.unfreeze()


def test_an_agent_outside_run_leaves_the_collector_alone(tmp_path):
    """Only ``serve`` (``edge-agent run``) freezes: agents in tests, ``demo`` and tools do not."""
    gc.unfreeze()
    cfg = load_store(write_store(tmp_path, broker_url=None))
    agent = Agent(cfg)
    agent.install(dataclasses.replace(cfg, version="v2"))
    assert gc.get_freeze_count() == 0

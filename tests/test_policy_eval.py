"""Offline policy evaluation (issue 23): on a simulated log with a known
ground truth, the inverse-propensity estimate recovers the value of a
policy the stores never ran."""

from __future__ import annotations

import random

import orjson
import pytest

from edge_agent.analytics.policy import choose, evaluate, policy_probs

PROMOS = ("p1", "p2", "p3")
# chance that a person of a segment buys (a 10.00 basket) after an offer of a promotion
BUY = {"a": {"p1": 0.10, "p2": 0.30, "p3": 0.05}, "b": {"p1": 0.40, "p2": 0.05, "p3": 0.20}}
LOGGING = {"*": {"p1": 0.3, "p2": 0.2, "p3": 0.1}}  # what ran: p1 everywhere unless exploring
NEW = {"a": {"p2": 0.9}, "b": {"p1": 0.9}, "*": {"p3": 0.5}}  # the candidate: p2 for a, p1 for b
HOLDOUT = {"p1": 0.2, "p2": 0.0, "p3": 0.5}


def simulated_log(n: int, seed: int, explore_pct: float = 40.0) -> tuple[list[bytes], float]:
    rng = random.Random(seed)
    lines = []
    true_value = 0.0
    for i in range(n):
        seg = "a" if rng.random() < 0.6 else "b"
        allowed = [p for p in PROMOS if rng.random() < 0.8] or ["p3"]
        probs = policy_probs(allowed, [seg], LOGGING, {}, {}, explore_pct)
        pid = rng.choices(list(probs), weights=list(probs.values()))[0]
        true_value += 10.0 * BUY[seg][choose(allowed, [seg], NEW, {}, {})]
        held = rng.random() < HOLDOUT[pid]
        person = f"p_{i}"
        lines.append(orjson.dumps({"kind": "would_offer" if held else "offer", "ts": i, "store": "s1",
                                   "person": person, "promotion_id": pid, "model": "m", "propensity": probs[pid],
                                   "allowed": allowed, "segments": [seg]}))
        if not held and rng.random() < BUY[seg][pid]:
            lines.append(orjson.dumps({"kind": "purchase", "ts": i + 0.5, "store": "s1", "person": person,
                                       "basket_total": 10.0, "attributed": [
                                           {"promotion_id": pid, "variant": None, "arm": "treated"}]}))
    return lines, true_value / n


def test_inverse_propensity_recovers_a_policy_never_run():
    lines, truth = simulated_log(20000, seed=4)
    out = evaluate(lines, table=NEW)
    lo, hi = out["value_ci95"]
    assert lo <= truth <= hi, (out, truth)
    assert hi - lo < 0.5  # 20,000 decisions: an interval narrow enough to act on
    assert out["logged_value"] < lo  # and it beats what ran (p1 for everyone)


def test_the_interval_covers_the_truth_in_most_runs():
    hits = 0
    runs = 40
    for seed in range(runs):
        lines, truth = simulated_log(2000, seed=100 + seed)
        lo, hi = evaluate(lines, table=NEW)["value_ci95"]
        hits += lo <= truth <= hi
    assert hits >= 34  # ~95 % of 40; 34 or more happens with probability > 99 %


def test_no_decisions_no_estimate():
    assert evaluate([b'{"kind": "transition"}'], table=NEW)["value"] is None


def test_policy_probs_and_ties():
    probs = policy_probs(["p1", "p2"], [], {"*": {"p1": 0.5, "p2": 0.5}}, {}, {"p2": 3}, 20.0)
    assert probs == pytest.approx({"p1": 0.1, "p2": 0.9})  # a tie goes to the higher priority
    assert choose(["p1", "p2"], ["vip"], {"vip": {"p1": 0.1}, "*": {"p2": 0.05}}, {"p2": 3.0}, {}) == "p2"

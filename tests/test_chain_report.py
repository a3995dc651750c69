"""The chain report (issue 23): two stores' exports give the stratified
answer, spilling to disk changes nothing, and the documented SQL gives the
same table in DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.analytics.chain import ChainReport, ExportError, chain_report
from simulator.exports import PromoSpec, StoreSpec, truth, write_export
from store_config.load import parse_promotions

DOCS = Path(__file__).resolve().parent.parent / "docs"
PROMOTIONS = [{"id": "apples", "title": "Apples", "discount": {"pct": 20}, "margin_pct": 30},
              {"id": "bread", "title": "Bread", "discount": {"amount": 1.5}}]

BIG = StoreSpec("prague-1", 3000, (PromoSpec("apples", holdout=0.5, buy_treated=0.32, lift=1.1),
                                   PromoSpec("bread", holdout=0.2, variants=("A", "B"))))
SMALL = StoreSpec("brno-2", 800, (PromoSpec("apples", holdout=0.1, buy_control=0.4, buy_treated=0.45),),
                  scale=2.5)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[list[Path], Path]:
    d = tmp_path_factory.mktemp("exports")
    a, b = d / "prague-1.jsonl.gz", d / "brno-2.jsonl"
    write_export(a, BIG, seed=1)
    write_export(b, SMALL, seed=1)
    promos = d / "promotions.json"
    promos.write_text(json.dumps(PROMOTIONS))
    return [a, b], promos


def promotions():
    return {p.id: p for p in parse_promotions(PROMOTIONS, file="promotions.json", timezone="UTC")}


def test_two_stores_give_the_stratified_answer(exports):
    paths, _ = exports
    rep = chain_report(paths, promotions=promotions(), by_store=True)
    assert rep["stores"] == 2 and set(rep["by_store"]) == {"prague-1", "brno-2"}
    chain = rep["promotions"]["apples"]["variants"]["-"]
    stores = [rep["by_store"][s]["promotions"]["apples"]["variants"]["-"] for s in ("prague-1", "brno-2")]
    # counts add up; incremental revenue is the sum of the stores' (each store against itself)
    for k in ("offered", "applied", "redeemed", "holdout", "converted_treated", "converted_control"):
        assert chain[k] == sum(s[k] for s in stores), k
    assert chain["incremental_revenue"] == pytest.approx(sum(s["incremental_revenue"] for s in stores), abs=0.02)
    # the control side is standardised to the treated people's mix of stores, not pooled
    treated_people = [s["offered"] for s in stores]  # one offer per person in these exports
    w = [n / sum(treated_people) for n in treated_people]
    assert chain["revenue_per_person_control"] == pytest.approx(
        sum(wi * s["revenue_per_person_control"] for wi, s in zip(w, stores)), abs=0.02)
    # and the known truth is inside the interval
    n_t = treated_people
    expected = n_t[0] * truth(BIG.promos[0]) + n_t[1] * truth(SMALL.promos[0], SMALL.scale)
    lo, hi = chain["incremental_revenue_ci95"]
    assert lo <= expected <= hi
    # money from the promotions: 20 % of the redeemed baskets, margin after the discount
    assert chain["discount_cost"] > 0
    assert chain["incremental_margin"] == pytest.approx(
        chain["incremental_revenue"] * 0.30 - chain["discount_cost"], abs=0.05)
    bread = rep["promotions"]["bread"]["variants"]
    assert set(bread) == {"A", "B"} and bread["A"]["discount_cost"] == 1.5 * bread["A"]["redeemed"]
    assert rep["promotions"]["apples"]["suppressed"]["cooldown"] > 0
    assert rep["since"] < rep["until"]


def test_without_promotions_money_that_needs_them_is_null(exports):
    paths, _ = exports
    row = chain_report(paths)["promotions"]["apples"]["variants"]["-"]
    assert row["discount_cost"] is None and row["incremental_margin"] is None
    assert row["incremental_revenue"] is not None


def test_spilling_to_disk_gives_the_same_answer(exports, tmp_path):
    paths, _ = exports
    whole = chain_report(paths, promotions=promotions(), by_store=True)
    agg = ChainReport(max_people=50, tmpdir=tmp_path)  # ~9,000 people: spilled many times, re-partitioned
    from edge_agent.analytics.chain import read_lines
    for line in read_lines(paths):
        agg.add_line(line)
    assert agg.people.spills > 10
    assert agg.result(promotions=promotions(), by_store=True) == whole
    assert list(tmp_path.iterdir()) == []  # the spill files are gone


def test_a_missing_or_broken_export_is_one_clear_error(tmp_path):
    with pytest.raises(ExportError, match="cannot read"):
        chain_report([tmp_path / "nope.jsonl"])
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ExportError, match="bad.jsonl.gz"):
        chain_report([bad])


def test_lines_that_are_not_events_are_counted_and_skipped(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('not json\n[1,2]\n\n{"kind": "offer", "store": "s", "person": "p_1", "promotion_id": "a"}\n')
    agg = ChainReport()
    from edge_agent.analytics.chain import read_lines
    for line in read_lines([p]):
        agg.add_line(line)
    assert agg.bad == 2 and agg.result()["promotions"]["a"]["variants"]["-"]["offered"] == 1


def test_an_export_with_a_byte_order_mark_loses_no_line(exports, tmp_path):
    """A tool that writes UTF-8 with a BOM (Excel, PowerShell) gives the same table: the first
    event is read, not counted as a bad line."""
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"kind": "offer", "store": "s", "person": "p_1", "promotion_id": "a"}\n'
                     '{"kind": "offer", "store": "s", "person": "p_2", "promotion_id": "a"}\n')
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    got = {}
    for p in (plain, bom):
        agg = ChainReport()
        from edge_agent.analytics.chain import read_lines
        for line in read_lines([p]):
            agg.add_line(line)
        got[p.name] = (agg.bad, agg.result()["promotions"]["a"]["variants"]["-"]["offered"])
    assert got["bom.jsonl"] == got["plain.jsonl"] == (0, 2)


def duckdb_rows(paths: list[Path], promos: Path) -> dict[tuple[str, str], dict]:
    import duckdb  # a declared test dependency: missing is a failure, not a skip
    files = ", ".join(f"'{p}'" for p in paths)
    load = (DOCS / "chain_load_duckdb.sql").read_text()
    assert "'exports/*.jsonl.gz'" in load and "'promotions.json'" in load
    load = load.replace("'exports/*.jsonl.gz'", files).replace("'promotions.json'", f"'{promos}'")
    con = duckdb.connect()
    try:
        con.execute(load)
        cur = con.execute((DOCS / "chain_report.sql").read_text())
        cols = [d[0] for d in cur.description]
        return {(r[0], r[1]): dict(zip(cols, r)) for r in cur.fetchall()}
    finally:
        con.close()


def test_the_documented_sql_gives_the_same_table_in_duckdb(exports):
    paths, promos = exports
    rep = chain_report(paths, promotions=promotions())
    rows = duckdb_rows(paths, promos)
    mine = {(pid, v): row for pid, p in rep["promotions"].items() for v, row in p["variants"].items()}
    assert set(rows) == set(mine)
    for key, row in mine.items():
        sql = rows[key]
        for k in ("offered", "applied", "redeemed", "holdout", "converted_treated", "converted_control"):
            assert sql[k] == row[k], (key, k)
        for k in ("conversion_treated", "conversion_control", "uplift", "revenue_per_person_treated",
                  "revenue_per_person_control", "basket_mean_treated", "basket_mean_control", "discount_cost",
                  "incremental_revenue", "incremental_margin"):
            if row[k] is None:
                assert sql[k] is None, (key, k)
            else:
                assert sql[k] == pytest.approx(row[k], abs=0.006), (key, k)
        for k, (lo, hi) in (("uplift_ci95", ("uplift_lo", "uplift_hi")),
                            ("incremental_revenue_ci95", ("incremental_revenue_lo", "incremental_revenue_hi"))):
            if row[k] is None:
                assert sql[lo] is None and sql[hi] is None
            else:
                assert [sql[lo], sql[hi]] == pytest.approx(row[k], abs=0.006), (key, k)


def test_the_sql_says_not_enough_data_like_the_command(tmp_path):
    tiny = StoreSpec("tiny", 40, (PromoSpec("apples", holdout=0.25),))
    p = tmp_path / "tiny.jsonl"
    write_export(p, tiny, seed=2)
    promos = tmp_path / "promotions.json"
    promos.write_text(json.dumps(PROMOTIONS))
    row = chain_report([p])["promotions"]["apples"]["variants"]["-"]
    assert row["holdout"] < 30 and row["incremental_revenue_ci95"] is None and row["uplift_ci95"] is None
    sql = duckdb_rows([p], promos)[("apples", "-")]
    assert sql["uplift_lo"] is None and sql["incremental_revenue_lo"] is None


def test_no_spread_gives_no_revenue_interval_in_the_command_and_the_sql(tmp_path):
    """Audit h2: 40 against 40 people who each bought one 12.34 basket: the
    command and the documented SQL both leave the revenue interval null (the
    rounding residue of Σr² − n·m² had given [-0.0, 0.0])."""
    lines = []
    for arm, kind in (("treated", "offer"), ("control", "would_offer")):
        for i in range(40):
            person = f"p_{arm}_{i}"
            lines.append({"kind": kind, "ts": 1.8e9 + i, "store": "s1", "person": person, "promotion_id": "apples",
                          "variant": None})
            lines.append({"kind": "purchase", "ts": 1.8e9 + i + 60, "store": "s1", "person": person,
                          "basket_total": 12.34,
                          "attributed": [{"promotion_id": "apples", "variant": "-", "arm": arm}]})
    p = tmp_path / "flat.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in lines))
    promos = tmp_path / "promotions.json"
    promos.write_text(json.dumps(PROMOTIONS))
    row = chain_report([p])["promotions"]["apples"]["variants"]["-"]
    assert row["revenue_per_person_treated"] == row["revenue_per_person_control"] == 12.34
    assert row["incremental_revenue_ci95"] is None and row["uplift_ci95"] is not None
    sql = duckdb_rows([p], promos)[("apples", "-")]
    assert sql["incremental_revenue_lo"] is None and sql["incremental_revenue_hi"] is None

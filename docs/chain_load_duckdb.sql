-- Load central's event exports into DuckDB for docs/chain_report.sql.
-- Replace the two file lists: the exports (JSON Lines, .gz fine, globs fine) and the promotions.
CREATE OR REPLACE TABLE raw_events AS
SELECT * FROM read_json(['exports/*.jsonl.gz'], format = 'newline_delimited', ignore_errors = true,
    columns = {kind: 'VARCHAR', ts: 'DOUBLE', store: 'VARCHAR', person: 'VARCHAR', device: 'VARCHAR',
               promotion_id: 'VARCHAR', variant: 'VARCHAR', reason: 'VARCHAR', basket_total: 'DOUBLE',
               attributed: 'STRUCT(promotion_id VARCHAR, variant VARCHAR, arm VARCHAR)[]'})
WHERE kind IN ('offer', 'would_offer', 'redemption', 'conversion', 'purchase', 'suppressed');

CREATE OR REPLACE VIEW events AS
SELECT kind, ts, store, person, device, promotion_id, variant, reason, basket_total FROM raw_events;

CREATE OR REPLACE VIEW purchase_attributions AS
SELECT store, COALESCE(person, device) AS person, a.promotion_id AS promotion_id, a.variant AS variant,
       a.arm AS arm, basket_total
FROM (SELECT store, person, device, basket_total, UNNEST(attributed) AS a FROM raw_events WHERE kind = 'purchase');

-- The promotions (for discount_cost and incremental_margin); leave it empty when you have none.
CREATE OR REPLACE TABLE promotions AS
SELECT id AS promotion_id, CAST(discount.pct AS DOUBLE) AS discount_pct,
       CAST(discount.amount AS DOUBLE) AS discount_amount, CAST(margin_pct AS DOUBLE) AS margin_pct
FROM read_json(['promotions.json'], format = 'array',
               columns = {id: 'VARCHAR', discount: 'STRUCT(pct DOUBLE, amount DOUBLE)', margin_pct: 'DOUBLE'});

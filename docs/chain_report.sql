-- The chain report in SQL: the same table as `edge-agent report --chain`, on a warehouse.
--
-- Input: three relations, loaded from central's event exports (see docs/campaigns.md,
-- "The chain in a warehouse", for DuckDB and PostgreSQL loaders):
--   events(kind, ts, store, person, device, promotion_id, variant, reason, basket_total)
--        one row per exported event (only offer, would_offer, redemption, conversion,
--        purchase and suppressed matter);
--   purchase_attributions(store, person, promotion_id, variant, arm, basket_total)
--        one row per element of a purchase event's "attributed" list;
--   promotions(promotion_id, discount_pct, discount_amount, margin_pct)
--        may be empty: discount_cost and incremental_margin are then NULL.
--
-- Method (docs/campaigns.md, "How sure are we"): people per arm; each store a stratum,
-- weighted by its share of the treated people, over the stores that have both arms;
-- uplift interval Agresti-Caffo; incremental revenue interval normal (delta method) on
-- the per-person revenue; fewer than 30 people in an arm: intervals NULL.
-- Portable SQL (DuckDB, PostgreSQL): CTEs, CASE, COALESCE, SQRT, window sums.

WITH exposed AS (
    SELECT DISTINCT store, promotion_id, COALESCE(variant, '-') AS variant,
           CASE kind WHEN 'offer' THEN 'treated' ELSE 'control' END AS arm,
           COALESCE(person, device) AS person
    FROM events
    WHERE kind IN ('offer', 'would_offer') AND promotion_id IS NOT NULL
      AND COALESCE(person, device) IS NOT NULL
),
bought AS (
    SELECT store, promotion_id, COALESCE(variant, '-') AS variant,
           CASE arm WHEN 'treated' THEN 'treated' ELSE 'control' END AS arm, person,
           SUM(COALESCE(basket_total, 0)) AS revenue, COUNT(basket_total) AS baskets
    FROM purchase_attributions
    WHERE person IS NOT NULL AND promotion_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5
),
redeemed AS (
    SELECT DISTINCT store, promotion_id, COALESCE(variant, '-') AS variant, COALESCE(person, device) AS person
    FROM events
    WHERE kind = 'conversion' AND promotion_id IS NOT NULL
),
people AS (
    SELECT e.store, e.promotion_id, e.variant, e.arm,
           CASE WHEN b.person IS NOT NULL OR r.person IS NOT NULL THEN 1 ELSE 0 END AS converted,
           COALESCE(b.revenue, 0) AS revenue, COALESCE(b.baskets, 0) AS baskets
    FROM exposed e
    LEFT JOIN bought b
           ON b.store = e.store AND b.promotion_id = e.promotion_id AND b.variant = e.variant
          AND b.arm = e.arm AND b.person = e.person
    LEFT JOIN redeemed r
           ON e.arm = 'treated' AND r.store = e.store AND r.promotion_id = e.promotion_id
          AND r.variant = e.variant AND r.person = e.person
),
arms AS (
    SELECT store, promotion_id, variant, arm, COUNT(*) AS n, SUM(converted) AS x,
           SUM(revenue) AS rev, SUM(revenue * revenue) AS rev2, SUM(baskets) AS baskets
    FROM people
    GROUP BY 1, 2, 3, 4
),
cell_events AS (
    SELECT store, promotion_id, COALESCE(variant, '-') AS variant,
           SUM(CASE WHEN kind = 'offer' THEN 1 ELSE 0 END) AS offered,
           SUM(CASE WHEN kind = 'redemption' THEN 1 ELSE 0 END) AS applied,
           SUM(CASE WHEN kind = 'conversion' THEN 1 ELSE 0 END) AS redeemed,
           SUM(CASE WHEN kind = 'conversion' THEN COALESCE(basket_total, 0) ELSE 0 END) AS redeemed_baskets
    FROM events
    WHERE kind IN ('offer', 'would_offer', 'redemption', 'conversion') AND promotion_id IS NOT NULL
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT DISTINCT store, promotion_id, COALESCE(variant, '-'), 0, 0, 0, 0
    FROM purchase_attributions
    WHERE promotion_id IS NOT NULL
),
cells AS (
    SELECT store, promotion_id, variant, SUM(offered) AS offered, SUM(applied) AS applied,
           SUM(redeemed) AS redeemed, SUM(redeemed_baskets) AS redeemed_baskets
    FROM cell_events
    GROUP BY 1, 2, 3
),
strata AS (
    SELECT k.*,
           COALESCE(t.n, 0) AS nt, COALESCE(t.x, 0) AS xt, COALESCE(t.rev, 0) AS rt,
           COALESCE(t.rev2, 0) AS r2t, COALESCE(t.baskets, 0) AS bt,
           COALESCE(c.n, 0) AS nc, COALESCE(c.x, 0) AS xc, COALESCE(c.rev, 0) AS rc,
           COALESCE(c.rev2, 0) AS r2c, COALESCE(c.baskets, 0) AS bc,
           CASE WHEN COALESCE(t.n, 0) > 0 AND COALESCE(c.n, 0) > 0 THEN 1 ELSE 0 END AS both_arms
    FROM cells k
    LEFT JOIN arms t ON t.store = k.store AND t.promotion_id = k.promotion_id AND t.variant = k.variant
                    AND t.arm = 'treated'
    LEFT JOIN arms c ON c.store = k.store AND c.promotion_id = k.promotion_id AND c.variant = k.variant
                    AND c.arm = 'control'
),
weighted AS (  -- the strata with both arms, their weight and the arms' pooled sums (variance fallback)
    SELECT s.*,
           CAST(SUM(nt) OVER w AS DOUBLE PRECISION) AS big_nt,
           CAST(SUM(nc) OVER w AS DOUBLE PRECISION) AS big_nc,
           SUM(rt) OVER w AS pool_rt, SUM(r2t) OVER w AS pool_r2t,
           SUM(rc) OVER w AS pool_rc, SUM(r2c) OVER w AS pool_r2c
    FROM strata s
    WHERE both_arms = 1
    WINDOW w AS (PARTITION BY promotion_id, variant)
),
terms AS (
    SELECT promotion_id, variant, big_nt, big_nc,
           nt / big_nt AS w,
           CAST(xt AS DOUBLE PRECISION) / nt AS p1,
           CAST(xc AS DOUBLE PRECISION) / nc AS p0,
           (xt + 1.0) / (nt + 2.0) AS a1,
           (xc + 1.0) / (nc + 2.0) AS a0,
           CAST(nt + 2 AS DOUBLE PRECISION) AS nt2, CAST(nc + 2 AS DOUBLE PRECISION) AS nc2,
           rt / nt AS m1, rc / nc AS m0,
           -- a sum of squares within 1e-9 of r2 is rounding, not spread (everyone spent the same)
           CASE WHEN nt >= 2 THEN CASE WHEN r2t - rt * rt / nt <= 1e-9 * r2t THEN 0.0
                                       ELSE (r2t - rt * rt / nt) / (nt - 1) END
                WHEN big_nt >= 2 THEN CASE WHEN pool_r2t - pool_rt * pool_rt / big_nt <= 1e-9 * pool_r2t THEN 0.0
                                           ELSE (pool_r2t - pool_rt * pool_rt / big_nt) / (big_nt - 1) END
                ELSE 0.0 END / nt AS vt,
           CASE WHEN nc >= 2 THEN CASE WHEN r2c - rc * rc / nc <= 1e-9 * r2c THEN 0.0
                                       ELSE (r2c - rc * rc / nc) / (nc - 1) END
                WHEN big_nc >= 2 THEN CASE WHEN pool_r2c - pool_rc * pool_rc / big_nc <= 1e-9 * pool_r2c THEN 0.0
                                           ELSE (pool_r2c - pool_rc * pool_rc / big_nc) / (big_nc - 1) END
                ELSE 0.0 END / nc AS vc
    FROM weighted
),
effect AS (
    SELECT promotion_id, variant, MAX(big_nt) AS big_nt, MAX(big_nc) AS big_nc,
           SUM(w * p1) AS p1, SUM(w * p0) AS p0,
           SUM(w * (a1 - a0)) AS d_ac,
           SUM(w * w * (a1 * (1 - a1) / nt2 + a0 * (1 - a0) / nc2)) AS var_ac,
           SUM(w * m1) AS m1, SUM(w * m0) AS m0,
           SUM(w * w * (vt + vc)) AS var_d
    FROM terms
    GROUP BY 1, 2
),
totals AS (
    SELECT promotion_id, variant, SUM(offered) AS offered, SUM(applied) AS applied, SUM(redeemed) AS redeemed,
           SUM(redeemed_baskets) AS redeemed_baskets,
           SUM(nt) AS people_treated, SUM(nc) AS holdout, SUM(xt) AS converted_treated,
           SUM(xc) AS converted_control, SUM(rt) AS rev_t, SUM(rc) AS rev_c, SUM(bt) AS baskets_t,
           SUM(bc) AS baskets_c
    FROM strata
    GROUP BY 1, 2
),
rows AS (
    SELECT t.promotion_id, t.variant, t.offered, t.applied, t.redeemed, t.holdout,
           t.converted_treated, t.converted_control,
           CASE WHEN e.big_nt IS NOT NULL THEN e.p1
                WHEN t.people_treated > 0 THEN CAST(t.converted_treated AS DOUBLE PRECISION) / t.people_treated
           END AS conversion_treated,
           CASE WHEN e.big_nt IS NOT NULL THEN e.p0
                WHEN t.holdout > 0 THEN CAST(t.converted_control AS DOUBLE PRECISION) / t.holdout
           END AS conversion_control,
           e.p1 - e.p0 AS uplift,
           CASE WHEN e.big_nt >= 30 AND e.big_nc >= 30 THEN e.d_ac - 1.959963984540054 * SQRT(e.var_ac) END
               AS uplift_lo,
           CASE WHEN e.big_nt >= 30 AND e.big_nc >= 30 THEN e.d_ac + 1.959963984540054 * SQRT(e.var_ac) END
               AS uplift_hi,
           CASE WHEN e.big_nt IS NOT NULL THEN e.m1
                WHEN t.people_treated > 0 THEN t.rev_t / t.people_treated
           END AS revenue_per_person_treated,
           CASE WHEN e.big_nt IS NOT NULL THEN e.m0
                WHEN t.holdout > 0 THEN t.rev_c / t.holdout
           END AS revenue_per_person_control,
           CASE WHEN t.baskets_t > 0 THEN t.rev_t / t.baskets_t END AS basket_mean_treated,
           CASE WHEN t.baskets_c > 0 THEN t.rev_c / t.baskets_c END AS basket_mean_control,
           CASE WHEN p.promotion_id IS NULL THEN NULL
                WHEN p.discount_amount IS NOT NULL THEN p.discount_amount * t.redeemed
                WHEN p.discount_pct IS NOT NULL THEN p.discount_pct / 100.0 * t.redeemed_baskets
                ELSE 0.0 END AS discount_cost,
           e.big_nt * (e.m1 - e.m0) AS incremental_revenue,
           CASE WHEN e.big_nt >= 30 AND e.big_nc >= 30 AND e.var_d > 0
                THEN e.big_nt * (e.m1 - e.m0 - 1.959963984540054 * SQRT(e.var_d)) END AS incremental_revenue_lo,
           CASE WHEN e.big_nt >= 30 AND e.big_nc >= 30 AND e.var_d > 0
                THEN e.big_nt * (e.m1 - e.m0 + 1.959963984540054 * SQRT(e.var_d)) END AS incremental_revenue_hi,
           p.margin_pct
    FROM totals t
    LEFT JOIN effect e ON e.promotion_id = t.promotion_id AND e.variant = t.variant
    LEFT JOIN promotions p ON p.promotion_id = t.promotion_id
)
SELECT promotion_id, variant, offered, applied, redeemed, holdout, converted_treated, converted_control,
       conversion_treated, conversion_control, uplift, uplift_lo, uplift_hi,
       revenue_per_person_treated, revenue_per_person_control, basket_mean_treated, basket_mean_control,
       discount_cost, incremental_revenue, incremental_revenue_lo, incremental_revenue_hi,
       incremental_revenue * margin_pct / 100.0 - COALESCE(discount_cost, 0) AS incremental_margin
FROM rows
ORDER BY promotion_id, variant;

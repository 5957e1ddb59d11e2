-- Per-user totals for GET /api/summary, refreshed CONCURRENTLY by a debounced background task
-- (never by a trigger on every write: that would serialise writers and recompute the whole
-- view per insert).
CREATE MATERIALIZED VIEW fund_summaries AS
SELECT user_id,
       count(*) FILTER (WHERE deleted_at IS NULL)                  AS total_funds,
       coalesce(sum(size) FILTER (WHERE deleted_at IS NULL), 0)    AS total_aum,
       avg(irr) FILTER (WHERE deleted_at IS NULL)                  AS avg_irr,
       max(greatest(updated_at, coalesce(deleted_at, updated_at))) AS last_activity
FROM funds
GROUP BY user_id;

-- REFRESH ... CONCURRENTLY needs a unique index.
CREATE UNIQUE INDEX fund_summaries_user_idx ON fund_summaries (user_id);

-- prodkit idempotency records (PostgreSQL 12+). Safe to run more than once.
-- The table name is the store's `table` option (default prodkit_idempotency).
CREATE TABLE IF NOT EXISTS {table} (
    key          text        PRIMARY KEY,
    fingerprint  bytea       NOT NULL,
    owner        text,                       -- claim owner token (kept once completed)
    locked_until timestamptz,                -- lease end while in progress or tentative
    expires_at   timestamptz NOT NULL,       -- the record is dead (and replaceable) after this
    status       integer,                    -- NULL while in progress
    headers      jsonb,                      -- [[name, value], ...] (latin-1 text)
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {table}_expires_at_idx ON {table} (expires_at);

-- Funds, owned by a user, soft-deleted, searchable.
CREATE TABLE funds (
    id            uuid PRIMARY KEY,
    user_id       text NOT NULL,
    name          text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description   text NOT NULL DEFAULT '',
    size          double precision NOT NULL CHECK (size > 0),
    stages        jsonb NOT NULL,
    irr           double precision NOT NULL,
    model_version text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    search        tsvector GENERATED ALWAYS AS (
        to_tsvector('simple', name || ' ' || description)
    ) STORED
);

-- The caller's newest-first listing (keyset pagination on created_at, id); live rows only.
CREATE INDEX funds_user_newest_idx ON funds (user_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- Full-text search for ?q= over live rows.
CREATE INDEX funds_search_idx ON funds USING gin (search) WHERE deleted_at IS NULL;

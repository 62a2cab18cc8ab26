-- Warm-up schedules: see the PostgreSQL migration 0027.
ALTER TABLE sending_domains ADD COLUMN warmup_from INTEGER;

CREATE TABLE IF NOT EXISTS warmup (
    domain       TEXT NOT NULL REFERENCES sending_domains (domain) ON DELETE CASCADE,
    provider     TEXT NOT NULL,
    step         INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    cap          INTEGER,
    used         INTEGER NOT NULL DEFAULT 0,
    parked       INTEGER NOT NULL DEFAULT 0,
    held         TEXT,
    started_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (domain, provider)
);

-- Warm-up schedules (issue 17, item 4; docs/deliverability.md, "Warm-up").
--
-- warmup_from: when the domain's warm-up began; NULL for a domain that is
-- established (every domain before this migration, an attested platform
-- domain, one an operator skipped). Changing it moves the sending-domain
-- revision on, so workers see it with the domain.
ALTER TABLE sending_domains ADD COLUMN warmup_from BIGINT;

-- One row per (warming domain, provider group) that has had mail: where its
-- ramp stands and what the current window let through. A window's counts
-- are of `window_start`; the first send of a later window rolls it over
-- (one step on if it had mail and the domain was healthy, else held, with
-- `held` saying why). cap NULL: past the ramp, warm.
CREATE TABLE warmup (
    domain       TEXT NOT NULL REFERENCES sending_domains (domain) ON DELETE CASCADE,
    provider     TEXT NOT NULL,
    step         BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    cap          BIGINT,
    used         BIGINT NOT NULL DEFAULT 0,
    parked       BIGINT NOT NULL DEFAULT 0,
    held         TEXT,
    started_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (domain, provider)
);

-- A domain's ramp belongs to the tenants that may send as it, as the
-- domain does (0012): they read it; only the platform changes it.
ALTER TABLE warmup ENABLE ROW LEVEL SECURITY;
ALTER TABLE warmup FORCE ROW LEVEL SECURITY;
CREATE POLICY platform ON warmup USING (mailpipe_platform()) WITH CHECK (mailpipe_platform());
CREATE POLICY tenant ON warmup FOR SELECT
    USING (domain IN (SELECT domain FROM sending_domain_tenants));
GRANT SELECT ON warmup TO mailpipe_api;

-- Every version of a registered template: see the PostgreSQL migration 0028.
CREATE TABLE IF NOT EXISTS campaign_template_versions (
    tenant_id     TEXT NOT NULL,
    campaign_id   TEXT NOT NULL,
    template_id   TEXT NOT NULL,
    version       INTEGER NOT NULL CHECK (version > 0),
    subject       TEXT NOT NULL,
    html          TEXT,
    text          TEXT,
    created_at    INTEGER NOT NULL,
    superseded_at INTEGER,
    PRIMARY KEY (tenant_id, campaign_id, template_id, version)
);
CREATE INDEX IF NOT EXISTS campaign_template_versions_superseded
    ON campaign_template_versions (superseded_at) WHERE superseded_at IS NOT NULL;

INSERT OR IGNORE INTO campaign_template_versions
    (tenant_id, campaign_id, template_id, version, subject, html, text, created_at)
SELECT tenant_id, campaign_id, template_id, version, subject, html, text, created_at
FROM campaign_templates;

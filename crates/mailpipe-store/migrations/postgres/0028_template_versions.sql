-- Every version of a registered template is kept (issue 17, item 2): a job
-- may pin the version it was written for (`template_version`), and a
-- version, once registered, never changes. campaign_templates stays the
-- latest of each, which unpinned jobs use. A superseded version is kept
-- `retention.template_versions_days` past the upload that replaced it.
CREATE TABLE campaign_template_versions (
    tenant_id     TEXT NOT NULL,
    campaign_id   TEXT NOT NULL,
    template_id   TEXT NOT NULL,
    version       BIGINT NOT NULL CHECK (version > 0),
    subject       TEXT NOT NULL,
    html          TEXT,
    text          TEXT,
    created_at    BIGINT NOT NULL,
    superseded_at BIGINT,
    PRIMARY KEY (tenant_id, campaign_id, template_id, version)
);
CREATE INDEX campaign_template_versions_superseded
    ON campaign_template_versions (superseded_at) WHERE superseded_at IS NOT NULL;

-- What was registered before this migration is its own first kept version.
-- campaign_templates' FORCEd policies would hide every tenant's rows from
-- the owner: the platform's scope, for this transaction only.
SELECT set_config('mailpipe.scope', 'platform', true);
INSERT INTO campaign_template_versions
    (tenant_id, campaign_id, template_id, version, subject, html, text, created_at)
SELECT tenant_id, campaign_id, template_id, version, subject, html, text, created_at
FROM campaign_templates;

-- A tenant's rows, as campaign_templates (0012): the platform's context sees
-- all, a tenant's only its own. A tenant registers versions (and marks the
-- one it replaces superseded); it never deletes one.
ALTER TABLE campaign_template_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE campaign_template_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY platform ON campaign_template_versions
    USING (mailpipe_platform()) WITH CHECK (mailpipe_platform());
CREATE POLICY tenant ON campaign_template_versions
    USING (tenant_id = mailpipe_tenant()) WITH CHECK (tenant_id = mailpipe_tenant());
GRANT SELECT, INSERT, UPDATE ON campaign_template_versions TO mailpipe_api;

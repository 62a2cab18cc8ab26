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

-- Each row written to campaign_templates is kept as its version; the one it
-- replaces is marked superseded. A number already kept is not overwritten
-- (the insert's conflict aborts the write).
CREATE TRIGGER IF NOT EXISTS campaign_templates_keep_version_insert AFTER INSERT ON campaign_templates
BEGIN
    UPDATE campaign_template_versions SET superseded_at = MAX(NEW.created_at, created_at)
    WHERE tenant_id = NEW.tenant_id AND campaign_id = NEW.campaign_id AND template_id = NEW.template_id
      AND superseded_at IS NULL AND version <> NEW.version;
    INSERT INTO campaign_template_versions
        (tenant_id, campaign_id, template_id, version, subject, html, text, created_at)
    VALUES (NEW.tenant_id, NEW.campaign_id, NEW.template_id, NEW.version, NEW.subject, NEW.html, NEW.text,
            NEW.created_at);
END;
CREATE TRIGGER IF NOT EXISTS campaign_templates_keep_version_update AFTER UPDATE ON campaign_templates
BEGIN
    UPDATE campaign_template_versions SET superseded_at = MAX(NEW.created_at, created_at)
    WHERE tenant_id = NEW.tenant_id AND campaign_id = NEW.campaign_id AND template_id = NEW.template_id
      AND superseded_at IS NULL AND version <> NEW.version;
    INSERT INTO campaign_template_versions
        (tenant_id, campaign_id, template_id, version, subject, html, text, created_at)
    VALUES (NEW.tenant_id, NEW.campaign_id, NEW.template_id, NEW.version, NEW.subject, NEW.html, NEW.text,
            NEW.created_at);
END;

-- A kept version never changes: only its superseded_at is set, once.
CREATE TRIGGER IF NOT EXISTS campaign_template_versions_unchanged BEFORE UPDATE ON campaign_template_versions
WHEN NEW.tenant_id IS NOT OLD.tenant_id OR NEW.campaign_id IS NOT OLD.campaign_id
  OR NEW.template_id IS NOT OLD.template_id OR NEW.version IS NOT OLD.version
  OR NEW.subject IS NOT OLD.subject OR NEW.html IS NOT OLD.html OR NEW.text IS NOT OLD.text
  OR NEW.created_at IS NOT OLD.created_at OR OLD.superseded_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'a registered template version never changes');
END;

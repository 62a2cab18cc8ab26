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

-- The database keeps the versions, whoever writes campaign_templates (an
-- API node of the release before this one, during a rolling upgrade,
-- included): each row written there is kept as its version, and the one
-- it replaces is marked superseded, in the writer's transaction and
-- context. A version already kept under that number is not overwritten:
-- the insert fails, and so does the write.
CREATE FUNCTION mailpipe_keep_template_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE campaign_template_versions SET superseded_at = GREATEST(NEW.created_at, created_at)
    WHERE tenant_id = NEW.tenant_id AND campaign_id = NEW.campaign_id AND template_id = NEW.template_id
      AND superseded_at IS NULL AND version <> NEW.version;
    INSERT INTO campaign_template_versions
        (tenant_id, campaign_id, template_id, version, subject, html, text, created_at)
    VALUES (NEW.tenant_id, NEW.campaign_id, NEW.template_id, NEW.version, NEW.subject, NEW.html, NEW.text,
            NEW.created_at);
    RETURN NULL;
END $$;
CREATE TRIGGER campaign_templates_keep_version AFTER INSERT OR UPDATE ON campaign_templates
    FOR EACH ROW EXECUTE FUNCTION mailpipe_keep_template_version();

-- A kept version never changes, for any role: only its superseded_at is
-- set, once. (Retention deletes whole rows.)
CREATE FUNCTION mailpipe_template_version_unchanged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.tenant_id, NEW.campaign_id, NEW.template_id, NEW.version, NEW.subject, NEW.created_at)
           IS DISTINCT FROM (OLD.tenant_id, OLD.campaign_id, OLD.template_id, OLD.version, OLD.subject, OLD.created_at)
       OR NEW.html IS DISTINCT FROM OLD.html OR NEW.text IS DISTINCT FROM OLD.text
       OR OLD.superseded_at IS NOT NULL THEN
        RAISE EXCEPTION 'a registered template version never changes' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER campaign_template_versions_unchanged BEFORE UPDATE ON campaign_template_versions
    FOR EACH ROW EXECUTE FUNCTION mailpipe_template_version_unchanged();

-- A tenant's rows, as campaign_templates (0012): the platform's context sees
-- all, a tenant's only its own. A tenant's upload keeps its versions (the
-- trigger runs as the tenant) and marks the one it replaces superseded; it
-- never deletes one, nor changes another column.
ALTER TABLE campaign_template_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE campaign_template_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY platform ON campaign_template_versions
    USING (mailpipe_platform()) WITH CHECK (mailpipe_platform());
CREATE POLICY tenant ON campaign_template_versions
    USING (tenant_id = mailpipe_tenant()) WITH CHECK (tenant_id = mailpipe_tenant());
GRANT SELECT, INSERT ON campaign_template_versions TO mailpipe_api;
GRANT UPDATE (superseded_at) ON campaign_template_versions TO mailpipe_api;

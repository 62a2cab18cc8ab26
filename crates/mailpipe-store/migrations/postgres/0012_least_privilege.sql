-- Least privilege (docs/security.md, "The database").
--
-- The schema's owner runs `mailpipe migrate` and nothing else. The services
-- connect as a role that owns nothing and is a member of two roles the
-- database administrator creates (scripts/services.sh and
-- docker/postgres-init.sql do):
--   mailpipe_service  rows of every table (no DDL, no TRUNCATE, the
--                     migrations' record read-only): the platform's work;
--   mailpipe_api      what a tenant reads, and its own suppressions: the
--                     tenant API's statements run as it (SET LOCAL ROLE).
--
-- Every table holding a tenant's rows has row-level security FORCEd, owner
-- included, with two policies: the tenant named by `mailpipe.tenant`, and
-- everything when `mailpipe.scope` is 'platform' (crates/mailpipe-store/src/context.rs).
-- A connection that set neither reads and writes no row of them.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe_service') THEN
    RAISE EXCEPTION 'role mailpipe_service does not exist'
      USING HINT = 'As the database administrator: CREATE ROLE mailpipe_service NOLOGIN; then GRANT mailpipe_service, mailpipe_api TO the login role the services use (docs/operations.md, "Database roles").';
  END IF;
END $$;

CREATE FUNCTION mailpipe_platform() RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('mailpipe.scope', true), '') = 'platform' $$;
CREATE FUNCTION mailpipe_tenant() RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('mailpipe.tenant', true), '') $$;

-- The policies of 0004 and 0007 were for mailpipe_api's reads only; the
-- ones below cover every role and every command.
DROP POLICY tenant_rows ON campaign_counters;
DROP POLICY tenant_rows ON campaign_links;
DROP POLICY tenant_rows ON send_ledger;
DROP POLICY tenant_rows ON events;
DROP POLICY tenant_rows ON suppressions;
DROP POLICY tenant_rows ON sending_domain_tenants;
DROP POLICY tenant_rows ON sending_domains;
DROP POLICY tenant_rows ON dkim_keys;

DO $$
DECLARE
  t record;
BEGIN
  FOR t IN SELECT * FROM (VALUES
      ('tenants', 'tenant_id'), ('campaign_templates', 'tenant_id'), ('send_ledger', 'tenant_id'),
      ('suppressions', 'scope_tenant'), ('events', 'tenant_id'), ('dead_letters', 'tenant_id'),
      ('campaign_counters', 'tenant_id'), ('campaign_links', 'tenant_id'),
      ('analytics_unique', 'tenant_id'), ('api_keys', 'tenant_id'), ('erasures', 'scope_tenant'),
      ('sending_domain_tenants', 'tenant_id')) AS v (name, col)
  LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t.name);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t.name);
    EXECUTE format('CREATE POLICY platform ON %I USING (mailpipe_platform()) WITH CHECK (mailpipe_platform())', t.name);
    EXECUTE format('CREATE POLICY tenant ON %I USING (%I = mailpipe_tenant()) WITH CHECK (%I = mailpipe_tenant())',
                   t.name, t.col, t.col);
  END LOOP;
END $$;

-- A domain and its keys belong to the tenants that may send as it.
ALTER TABLE sending_domains FORCE ROW LEVEL SECURITY;
ALTER TABLE dkim_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY platform ON sending_domains USING (mailpipe_platform()) WITH CHECK (mailpipe_platform());
CREATE POLICY tenant ON sending_domains FOR SELECT
    USING (domain IN (SELECT domain FROM sending_domain_tenants));
CREATE POLICY platform ON dkim_keys USING (mailpipe_platform()) WITH CHECK (mailpipe_platform());
CREATE POLICY tenant ON dkim_keys FOR SELECT
    USING (domain IN (SELECT domain FROM sending_domain_tenants));

-- A tenant asking whether an address is suppressed for it is told about
-- platform-wide entries too (they stop its sends); it cannot change them.
CREATE POLICY tenant_reads_platform ON suppressions FOR SELECT
    USING (scope_tenant = '' AND mailpipe_tenant() IS NOT NULL);

-- The services' grants: rows, not the schema.
GRANT USAGE ON SCHEMA public TO mailpipe_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO mailpipe_service;
REVOKE INSERT, UPDATE, DELETE ON _sqlx_migrations FROM mailpipe_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO mailpipe_service;
-- Tables and sequences later migrations create get the same.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO mailpipe_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO mailpipe_service;

-- A tenant writes its own suppressions (the API and its CSV import).
GRANT INSERT, UPDATE, DELETE ON suppressions TO mailpipe_api;

-- Narrows what a tenant's context may do (0012 gave it its rows, FOR ALL):
--
-- * The platform's policies never apply to role mailpipe_api, whatever a
--   session's settings say: a tenant's statements see the tenant's rows.
-- * A tenant's context no longer reads platform-wide suppressions (their
--   rows name the tenant whose mail an unsubscribe or complaint came
--   from); the API asks the platform for just the reason instead.
-- * In its own suppressions a tenant's context may add what the API lets a
--   tenant add (its own list: manual entries, and imports, which may carry
--   the unsubscribes, complaints and bounces a former provider recorded),
--   never an erasure and never in another tenant's name; and it may remove
--   only what it made itself (manual, import), as the API allows. A
--   recipient's unsubscribe, a complaint, a bounce or an erasure stays,
--   even under a query that forgot the rule.
CREATE OR REPLACE FUNCTION mailpipe_platform() RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('mailpipe.scope', true), '') = 'platform'
              AND current_user <> 'mailpipe_api' $$;

DROP POLICY tenant_reads_platform ON suppressions;
DROP POLICY tenant ON suppressions;
CREATE POLICY tenant_reads ON suppressions FOR SELECT
    USING (scope_tenant = mailpipe_tenant());
CREATE POLICY tenant_adds ON suppressions FOR INSERT
    WITH CHECK (scope_tenant = mailpipe_tenant() AND coalesce(source_tenant, scope_tenant) = scope_tenant
                AND reason <> 'erasure');
-- USING admits the tenant's every row so that an add which meets a
-- stronger entry is the no-op the insert's own WHERE makes it, not an error;
-- WITH CHECK keeps what is written what an add may write.
CREATE POLICY tenant_changes ON suppressions FOR UPDATE
    USING (scope_tenant = mailpipe_tenant())
    WITH CHECK (scope_tenant = mailpipe_tenant() AND coalesce(source_tenant, scope_tenant) = scope_tenant
                AND reason <> 'erasure');
CREATE POLICY tenant_removes ON suppressions FOR DELETE
    USING (scope_tenant = mailpipe_tenant() AND reason IN ('manual', 'import'));

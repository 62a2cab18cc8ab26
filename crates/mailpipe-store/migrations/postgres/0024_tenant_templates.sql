-- Tenants register their own templates through the API (issue 17, item 2),
-- as their own context: the row-level security of 0012 holds a tenant's
-- statements to its own rows of campaign_templates, reads and writes alike.
GRANT SELECT, INSERT, UPDATE ON campaign_templates TO mailpipe_api;

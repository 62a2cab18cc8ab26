-- One tenant's tracked links can be revoked without touching the others':
-- tokens carry the generation they were signed in, and raising a tenant's
-- generation (`mailpipe tenant revoke-links`) refuses its older opens and
-- clicks. Unsubscribe links keep working.
ALTER TABLE tenants ADD COLUMN link_generation INTEGER NOT NULL DEFAULT 0;

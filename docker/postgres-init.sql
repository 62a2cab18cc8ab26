-- The role tenant API reads run as, under row-level security
-- (docs/privacy.md). Migrations grant it SELECT; they do not create it,
-- because creating roles is the database administrator's business.
CREATE ROLE mailpipe_api NOLOGIN;
GRANT mailpipe_api TO mailpipe;

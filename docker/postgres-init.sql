-- The roles of docs/operations.md, "Database roles". Creating roles is the
-- database administrator's business, so migrations do not; they grant to
-- these.
--   mailpipe          owns the schema; runs `mailpipe migrate` (POSTGRES_USER)
--   mailpipe_app      what the services log in as: owns nothing
--   mailpipe_service  its grants: rows of every table, not the schema
--   mailpipe_api      what the tenant API's statements run as
-- The password below is for this compose file only.
CREATE ROLE mailpipe_api NOLOGIN;
CREATE ROLE mailpipe_service NOLOGIN;
CREATE ROLE mailpipe_app LOGIN PASSWORD 'mailpipe_app';
GRANT mailpipe_api TO mailpipe;
GRANT mailpipe_service, mailpipe_api TO mailpipe_app;

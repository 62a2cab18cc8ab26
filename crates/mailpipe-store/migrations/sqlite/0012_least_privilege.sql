-- PostgreSQL's 0012 sets up roles and row-level security; SQLite has
-- neither (one file, one process: docs/security.md, "The database").
-- Kept so that both backends count the same versions.
SELECT 1;

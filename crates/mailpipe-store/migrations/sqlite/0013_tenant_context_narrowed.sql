-- PostgreSQL's 0013 narrows row-level security policies; SQLite has none.
-- Kept so that both backends count the same versions.
SELECT 1;

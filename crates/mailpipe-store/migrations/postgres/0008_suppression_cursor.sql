-- Workers follow the suppression table by the transaction that wrote each
-- row, not by its created_at: a row stamped by a lagging clock, or written
-- by a transaction that committed long after it began (an import), was
-- older than the followers' overlap by the time it became visible, and was
-- never seen.
--
-- txid is the writing transaction's id. A follower reads the rows with
-- txid at or past its cursor and moves the cursor to the oldest transaction
-- still running at that moment (pg_snapshot_xmin): everything before it has
-- committed (and was read) or aborted; a row of a transaction still open is
-- read by a later poll, once it commits.
--
-- Existing rows keep txid NULL: every follower reads them in its first,
-- full, load. Adding a nullable column and then a default touches no rows.
ALTER TABLE suppressions ADD COLUMN txid xid8;
ALTER TABLE suppressions ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX suppressions_txid ON suppressions (txid);

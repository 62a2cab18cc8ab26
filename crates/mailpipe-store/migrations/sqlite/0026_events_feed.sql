-- What analytics reads the single node's events through: a row per event
-- inserted, numbered in commit order by AUTOINCREMENT, which never reuses a
-- number (the events table's rowid, its cursor until now, is renumbered by
-- VACUUM, which erasure runs, and reused once the newest rows are deleted,
-- so events could be skipped for good). Counted rows are deleted: the feed
-- is also the cursor, kept across restarts.
CREATE TABLE IF NOT EXISTS events_feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS events_feed_insert AFTER INSERT ON events
BEGIN
    INSERT INTO events_feed (event_id) VALUES (NEW.event_id);
END;
-- The events already stored are read once more (counting is idempotent).
INSERT INTO events_feed (event_id) SELECT event_id FROM events ORDER BY rowid;

-- Workers follow the suppression table by a sequence number, not by its
-- created_at (see the PostgreSQL migration for why). SQLite has one writer
-- at a time, so numbers handed out by a trigger from a counter that never
-- goes back are in commit order: a follower that has read up to n has
-- every row up to n. (The rowid would not do: SQLite reuses the largest
-- after a delete.)
CREATE TABLE suppression_seq (n INTEGER NOT NULL);
INSERT INTO suppression_seq (n) VALUES (0);
ALTER TABLE suppressions ADD COLUMN seq INTEGER;
CREATE INDEX suppressions_seq ON suppressions (seq);
CREATE TRIGGER suppressions_number AFTER INSERT ON suppressions
BEGIN
    UPDATE suppression_seq SET n = n + 1;
    UPDATE suppressions SET seq = (SELECT n FROM suppression_seq) WHERE rowid = NEW.rowid;
END;

-- The single-node mode's durable queue (queue.kind = "store"): what the
-- Kafka send topic is beyond one machine. A row is a record and `seq` its
-- offset, never reused (AUTOINCREMENT), so a record id names one record for
-- good (dead letters are kept once per record id). A worker deletes a row
-- once the job's outcome, or its place on the retry schedule, is durable;
-- the rows a crash leaves are read again when the worker starts, and the
-- ledger turns each into a replay or a send, never a second one.
CREATE TABLE IF NOT EXISTS send_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    enqueued_at INTEGER NOT NULL
);

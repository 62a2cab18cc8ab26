-- A soft bounce counts once per send: a DSN delivered twice, or naming
-- the address in several blocks, is one soft bounce, not several.
ALTER TABLE soft_bounces ADD COLUMN send_key TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX soft_bounces_once ON soft_bounces (recipient_hash, send_key);
CREATE INDEX soft_bounces_at ON soft_bounces (at);

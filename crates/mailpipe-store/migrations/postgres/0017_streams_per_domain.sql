-- The reputation breaker per sending domain as well as per tenant
-- (docs/deliverability.md), and the daily volume per From domain in the
-- stats: each event names the domain its job was sent as, and the reason a
-- bounce gives (user_unknown, ...) is a column the figures can count.
ALTER TABLE events ADD COLUMN sender_domain TEXT;
ALTER TABLE events ADD COLUMN reason TEXT;
-- Only the breaker reads it, over the last 7 days: older rows stay NULL,
-- so the backfill touches a week of events, not the table.
UPDATE events SET reason = payload::jsonb->>'reason'
 WHERE type = 'bounced' AND occurred_at >= (extract(epoch FROM now()) * 1000)::bigint - 7 * 86400000;

-- A stream is a tenant's ('' for all its mail) or one of its sending
-- domains'.
ALTER TABLE streams ADD COLUMN domain TEXT NOT NULL DEFAULT '';
ALTER TABLE streams DROP CONSTRAINT streams_pkey;
ALTER TABLE streams ADD PRIMARY KEY (tenant_id, domain);

-- The reputation breaker per sending domain as well as per tenant
-- (docs/deliverability.md), and the daily volume per From domain in the
-- stats: each event names the domain its job was sent as, and the reason a
-- bounce gives (user_unknown, ...) is a column the figures can count.
ALTER TABLE events ADD COLUMN sender_domain TEXT;
ALTER TABLE events ADD COLUMN reason TEXT;
UPDATE events SET reason = payload::jsonb->>'reason' WHERE type = 'bounced';

-- A stream is a tenant's ('' for all its mail) or one of its sending
-- domains'.
ALTER TABLE streams ADD COLUMN domain TEXT NOT NULL DEFAULT '';
ALTER TABLE streams DROP CONSTRAINT streams_pkey;
ALTER TABLE streams ADD PRIMARY KEY (tenant_id, domain);

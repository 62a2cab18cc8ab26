-- The breaker per mailbox provider too (docs/deliverability.md): Gmail
-- judges a sender by the complaints of Gmail's users, not by its overall
-- rate. Each event of a send names the provider group of its recipient's
-- domain (found by MX) as a column the figures group by, and a stream may
-- be a tenant's mail to one provider.
ALTER TABLE events ADD COLUMN provider TEXT;
-- Only the breaker reads it, over the last 7 days: older rows stay NULL,
-- so the backfill touches a week of events, not the table.
UPDATE events SET provider = payload::jsonb->>'provider'
 WHERE type IN ('sent', 'bounced') AND occurred_at >= (extract(epoch FROM now()) * 1000)::bigint - 7 * 86400000;

ALTER TABLE streams ADD COLUMN provider TEXT NOT NULL DEFAULT '';
ALTER TABLE streams DROP CONSTRAINT streams_pkey;
ALTER TABLE streams ADD PRIMARY KEY (tenant_id, domain, provider);

-- A marketing unsubscribe stops marketing mail from every tenant: that is
-- the platform's promise to recipients, so no tenant setting narrows it any
-- more. (Entries recorded tenant-scoped before stay as they were.)
ALTER TABLE tenants DROP COLUMN unsubscribe_scope;

-- Transactional mail is exempt from marketing unsubscribes, so sending it
-- is not a tenant's own declaration: the operator allows it per tenant.
-- Tenants registered before keep the transactional mail they were sending;
-- new ones start without it.
ALTER TABLE tenants ADD COLUMN transactional_allowed BOOLEAN NOT NULL DEFAULT 0;
UPDATE tenants SET transactional_allowed = 1;

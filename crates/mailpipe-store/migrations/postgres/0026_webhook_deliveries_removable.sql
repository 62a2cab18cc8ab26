-- A tenant that removes a webhook endpoint removes its deliveries with it
-- (row-level security of 0025 holds it to its own).
GRANT DELETE ON webhook_deliveries TO mailpipe_api;

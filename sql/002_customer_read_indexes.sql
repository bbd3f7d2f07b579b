-- The list is ordered by (created_at, customer_id) and paged by keyset on the same
-- pair, with or without a status filter; both walks are index range scans.
CREATE INDEX customers_created ON customers (created_at, customer_id);
CREATE INDEX customers_status_created ON customers (status, created_at, customer_id);

-- Contract sections 12 and 13: stored answers of Idempotency-Key writes, and the API
-- keys in a table of their own so that a key can be verified by one index lookup and
-- no two customers (nor the two slots of one) can ever hold the same key hash.

-- One row per current API key. The primary key on key_hash is what makes a hash unique
-- across customers and across both slots (two unique indexes on two columns of
-- customers could not stop customer A's primary from equalling B's secondary).
-- No foreign key to customers: customers are never deleted, verification joins them
-- anyway, and an FK would make `TRUNCATE customers` (tests, tools) fail and add a
-- referential check to every registration.
CREATE TABLE api_keys (
    key_hash    bytea       PRIMARY KEY,  -- SHA-256 of the key; the key is never stored
    customer_id text        NOT NULL,
    slot        text        NOT NULL CHECK (slot IN ('primary', 'secondary')),
    created_at  timestamptz NOT NULL,
    UNIQUE (customer_id, slot)
);

INSERT INTO api_keys (key_hash, customer_id, slot, created_at)
SELECT primary_key_hash, customer_id, 'primary', created_at FROM customers
UNION ALL
SELECT secondary_key_hash, customer_id, 'secondary', created_at FROM customers;

ALTER TABLE customers DROP COLUMN primary_key_hash, DROP COLUMN secondary_key_hash;

-- The first answer to a write sent with an Idempotency-Key, written in the transaction
-- of the write's effects. Requests in flight are not recorded here: they hold a
-- transaction-level advisory lock on (service id, key), which PostgreSQL releases when
-- the transaction ends, a crashed caller's included.
CREATE TABLE idempotency_keys (
    service_id   text        NOT NULL,
    idem_key     text        NOT NULL,
    -- SHA-256 of method, path and the body as parsed JSON: tells a retry from a reuse.
    request_hash bytea       NOT NULL,
    status       smallint    NOT NULL,
    -- Location / ETag of the answer (never secret).
    headers      jsonb       NOT NULL,
    -- The answer's body, AES-GCM under a key derived from XCLOUD_SECRET_KEY: it can
    -- hold API keys.
    body_sealed  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (service_id, idem_key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Customers, their outbox, the service credentials that may call the API, and the
-- nonces that stop a signed request from being replayed.

CREATE TABLE customers (
    customer_id        text PRIMARY KEY,
    status             text        NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'SUSPENDED')),
    -- The mutable fields as the API shows them (customerName ... location, limits).
    data               jsonb       NOT NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    -- Bumped on every change; the ETag is derived from it.
    version            integer     NOT NULL DEFAULT 1,
    -- SHA-256 of the two API keys; the keys themselves are shown once and never stored.
    primary_key_hash   bytea       NOT NULL,
    secondary_key_hash bytea       NOT NULL
);

-- One row per event to publish. `id` order is commit order for one customer: every
-- writer of a customer's event holds that customer's row lock (or inserts the row)
-- until it commits, so a later event of the same customer always gets a larger id.
CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid        NOT NULL UNIQUE,
    event_type       text        NOT NULL,
    customer_id      text        NOT NULL,
    -- Relay lane: a stable hash of the customer id, so one customer's events share a lane.
    lane             smallint    NOT NULL,
    -- The CloudEvents JSON exactly as it goes on the topic.
    payload          bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    dead_lettered_at timestamptz
);

-- What the relay reads: pending rows in id order (it filters by the lanes it holds).
CREATE INDEX outbox_pending ON outbox (id) INCLUDE (lane)
    WHERE published_at IS NULL AND dead_lettered_at IS NULL;
-- What retention deletes, oldest first.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX outbox_dead_lettered ON outbox (dead_lettered_at) WHERE dead_lettered_at IS NOT NULL;

-- Wakes the relays (LISTEN xcloud_outbox) once per inserting statement; identical
-- notifications of one transaction fold into one.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xcloud_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TABLE service_credentials (
    service_id       text PRIMARY KEY,
    -- AES-GCM under a key derived from XCLOUD_SECRET_KEY; nonce || ciphertext.
    secret_encrypted bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz
);

-- Unlogged: a nonce only has to outlive the 300-second window, and a request that
-- writes nothing else then commits without waiting for a WAL flush. After a database
-- crash the table is empty, so a request captured in the last five minutes before the
-- crash could be replayed once; docs/operations.md (security notes) records that.
CREATE UNLOGGED TABLE auth_nonces (
    service_id text        NOT NULL,
    nonce      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (service_id, nonce)
);

CREATE INDEX auth_nonces_expiry ON auth_nonces (expires_at);

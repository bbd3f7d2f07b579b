-- The per-statement NOTIFY trigger made every writing transaction take PostgreSQL's
-- global notification lock through its commit (WAL flush included), so writers committed
-- one at a time: pgbench on the registration SQL ran at about half the rate without it
-- (issue 16). Relays are now woken from outside the write transaction: each API process
-- sends at most one NOTIFY every few milliseconds, after its commits, on a connection of
-- its own with synchronous_commit off (service/outbox/wakeup.py), and relays poll
-- adaptively as a safety net (docs/relay.md, "Waking up").
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();

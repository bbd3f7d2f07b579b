"""The SQL of the outbox table as the relay reads, settles and trims it (the writes that
add rows live with the state they describe: db/customers.py, db/api_keys.py)."""

# Pending rows of the lanes a relay holds, in id order (= commit order per customer).
FETCH_PENDING_SQL = """
SELECT id, customer_id, payload FROM outbox
WHERE published_at IS NULL AND dead_lettered_at IS NULL AND lane = ANY($1::smallint[])
  AND NOT id = ANY($2::bigint[])  -- the batch still in flight
ORDER BY id
LIMIT $3
"""

MARK_PUBLISHED_SQL = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
DELETE_ACKNOWLEDGED_SQL = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"

RECORD_FAILURE_SQL = """
UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])
"""

DEAD_LETTER_SQL = """
UPDATE outbox SET dead_lettered_at = now(), attempts = attempts + 1, last_error = $2
WHERE id = $1
"""

# Small batches, so retention never holds long locks or builds a huge transaction.
DELETE_PUBLISHED_SQL = """
DELETE FROM outbox WHERE id = ANY(ARRAY(
    SELECT id FROM outbox
    WHERE published_at < now() - make_interval(secs => $1)
    ORDER BY published_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED))
"""

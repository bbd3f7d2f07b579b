"""The outbox relay: committed outbox rows -> Kafka, at least once, in per-customer order.

- `lanes.py`: which customers this relay may publish (advisory locks in PostgreSQL).
- `pipeline.py`: pure rules for a batch in flight: what was acknowledged, what is
  dead-lettered, what stays pending, and what a failure asks of the relay.
- `producer.py`: the Kafka side: the topic, one idempotent producer at a time, and the
  classification of Kafka errors.
- `retention.py`: deleting published rows kept for a while.
- `relay.py`: the loop that ties them together, with its states and backoff.
- `wakeup.py`: how API processes wake the relays after their commits (coalesced NOTIFY).

docs/relay.md explains why this keeps each customer's events in commit order.

May import: db, domain, config, metrics, server (process life). Never imports api or
usecases: the relay only reads what the unit of work committed.
"""

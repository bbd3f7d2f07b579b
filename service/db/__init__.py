"""PostgreSQL: connecting (connect.py), migrating (migrate.py, files in sql/), and the
SQL of each table in a file of its own (customers, outbox, api_keys, idempotency_keys,
nonces, credentials).

May import: domain (api_keys.key_hash), auth.secretbox and auth.signing (constants).
Never imports api, usecases or outbox.
"""

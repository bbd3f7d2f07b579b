"""What a write does, as one unit of work: unit_of_work.py claims the request's nonce,
opens the transaction, applies the Idempotency-Key, lets the use case write state and
outbox rows together, and commits (contract sections 2 and 12). customers.py and
api_keys.py are the use cases; they return result types, which the API renders.

May import: domain, db, metrics, auth.secretbox. Never imports api or aiohttp.
"""

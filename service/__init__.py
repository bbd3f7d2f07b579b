"""XCloud customer registry.

The folders follow a request: `api/` (HTTP in and out) -> `auth/` (who is calling) ->
`usecases/` (one unit of work per write) -> `domain/` (the customer's rules, no I/O) ->
`db/` (all SQL, one file per table) -> `outbox/` (the relay: committed events to
Kafka). `tools/` is what callers run (client, customer CLI, importer). At the top:
`config.py` (environment), `logs.py`, `metrics.py`, `cli.py` (`xcloud`), `server.py`
(worker and relay processes). docs/architecture.md draws it.
"""

"""HTTP: the route table (routes.py, each route once), the aiohttp app and its
middlewares, the route handlers, request and answer
schemas, the error format, the OpenAPI document.

May import: domain, usecases, auth, db (reads only: handlers read views directly),
outbox.wakeup and outbox.lanes (to wake relays and report them), config, metrics,
error_codes.
Nothing else imports api, except tools (header names).
"""

"""Typed keys for what the app and each request carry (aiohttp's AppKey/RequestKey)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from service.api.pagination import CursorSigner
from service.api.schemas import ListQuerySchema
from service.auth.credentials import CredentialStore
from service.auth.signing import SignedRequest
from service.config import Settings
from service.metrics import DatabaseGauges
from service.outbox.wakeup import Waker
from service.usecases.unit_of_work import Answers

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
CREDENTIALS = web.AppKey("credentials", CredentialStore)
CURSORS = web.AppKey("cursors", CursorSigner)
LIST_QUERY = web.AppKey("list_query", ListQuerySchema)  # checks cursors with CURSORS
GAUGES = web.AppKey("gauges", DatabaseGauges)
ANSWERS = web.AppKey("answers", Answers)  # stored Idempotency-Key answers
WAKER = web.AppKey("waker", Waker)  # wakes the relays after this process's commits

REQUEST_ID = web.RequestKey("request_id", str)
CALLER = web.RequestKey("caller", SignedRequest)  # authenticated, nonce not claimed yet
BODY = web.RequestKey("body", bytes)

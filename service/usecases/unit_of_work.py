"""Retry-safe writes (contract section 12): the Idempotency-Key header.

Every write route runs its effects through `write_transaction`, one PostgreSQL
transaction that

1. claims the request's nonce (a replayed nonce is answered first, as everywhere) and,
   with a key, tries a transaction-level advisory lock on (service id, key). Not
   getting it means another request with that key is running: 409, at once, never a
   wait. The lock lives exactly as long as that transaction, so a worker killed mid-
   request, or its lost connection, frees the key the moment PostgreSQL ends the
   transaction: no pending row can outlive a crash;
2. with the lock held, looks up a stored answer in a new statement (a new snapshot under
   READ COMMITTED, so an answer committed just before the lock was granted is seen);
3. runs the write's effects and stores the answer (status, Location/ETag, body sealed with
   AES-GCM) in the same transaction: a crash can never keep one without the other.

The nonce claim commits with everything the request answers, a 409, a 422 or a replay
included: a captured retry cannot be replayed to read the stored answer (its API keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from service import metrics
from service.api.errors import ApiError, ErrorCode, validation_error
from service.auth.secretbox import SecretBox
from service.db.nonces import CLAIM_NONCE_SQL, Replayed

log = logging.getLogger("xcloud.idempotency")

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# The first answer is stored when it is one of these; others (400, 401, 413, 415, 5xx)
# leave the key free for a corrected request.
STORED_STATUSES = frozenset({200, 201, 404, 409, 412})
KEPT_HEADERS = ("Location", "ETag")
_KEY = re.compile(r"[!-~]{1,255}")
_BOX_INFO = b"xcloud idempotent answers v1"  # its own key, not the service secrets' one

Effects = Callable[[asyncpg.Connection], Awaitable[web.Response]]
# A write that looks its key up, runs and stores its answer in one statement of its own
# (registration): returns the live stored answer, or None and its own answer.
Combined = Callable[[asyncpg.Connection], Awaitable[tuple[Mapping[str, Any] | None, web.Response]]]


def key_of(headers: Any) -> str | None:
    """The request's Idempotency-Key, None without one; 400 for a bad or repeated one."""
    values = headers.getall(KEY_HEADER, [])
    if not values:
        return None
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        raise validation_error(
            {KEY_HEADER: ["Must be sent once, 1-255 characters from '!' to '~'."]}
        )
    return values[0]


def fingerprint(method: str, path: str, body: Any) -> bytes:
    """What makes two requests "the same": method, path, body as parsed JSON (key order
    and whitespace do not matter; orjson sorts keys at every depth)."""
    canonical = b"" if body is None else orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(method.encode() + b"\n" + path.encode() + b"\n" + canonical).digest()


def lock_id(service_id: str, key: str) -> int:
    # PostgreSQL's one-bigint advisory lock space (the relay's lane locks use the
    # two-int space, a separate one). Two keys sharing 64 bits only ever meet as a 409.
    digest = hashlib.blake2b(f"{service_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Answers:
    """Seals stored answers: a dumped row is useless without XCLOUD_SECRET_KEY, and the
    associated data ties a row to its service id and key."""

    def __init__(self, secret_key: str, ttl_seconds: int) -> None:
        self._box = SecretBox(secret_key, info=_BOX_INFO)
        self.ttl_seconds = ttl_seconds

    def seal(self, service_id: str, key: str, body: bytes) -> bytes:
        return self._box.seal_bytes(_associated(service_id, key), body)

    def open(self, service_id: str, key: str, sealed: bytes) -> bytes:
        return self._box.open_bytes(_associated(service_id, key), sealed)


def _associated(service_id: str, key: str) -> bytes:
    return f"{service_id}\x00{key}".encode()


@dataclass(frozen=True, slots=True)
class Scope:
    service_id: str
    nonce: str
    key: str | None
    request_hash: bytes
    route: str  # for the metrics: the route's template, a bounded label


_BEGIN_SQL = f"""
WITH nonce AS ({CLAIM_NONCE_SQL})
SELECT EXISTS (SELECT 1 FROM nonce) AS fresh,
       CASE WHEN EXISTS (SELECT 1 FROM nonce) THEN pg_try_advisory_xact_lock($3) END AS locked
"""


def prior_sql(service_id: str = "$1", key: str = "$2") -> str:
    """The live stored answer of a key; alone, or as a CTE of a write's own statement."""
    return (
        "SELECT request_hash, status, headers, body_sealed FROM idempotency_keys"
        f" WHERE service_id = {service_id} AND idem_key = {key} AND expires_at > now()"
    )


def store_sql(
    service_id: str = "$1",
    key: str = "$2",
    request_hash: str = "$3",
    status: str = "$4",
    headers: str = "$5",
    body: str = "$6",
    ttl: str = "$7",
    where: str = "",
) -> str:
    """Insert an answer. Under the key's lock no live row can exist; an expired one not
    swept yet is replaced, and a live one never (RETURNING then gives no row)."""
    return f"""
    INSERT INTO idempotency_keys (service_id, idem_key, request_hash, status, headers,
                                  body_sealed, expires_at)
    SELECT {service_id}, {key}, {request_hash}, {status}, {headers}::jsonb, {body},
           now() + make_interval(secs => {ttl})
    {where}
    ON CONFLICT (service_id, idem_key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status,
        headers = EXCLUDED.headers, body_sealed = EXCLUDED.body_sealed,
        created_at = now(), expires_at = EXCLUDED.expires_at
    WHERE idempotency_keys.expires_at <= now()
    RETURNING 1"""


_PRIOR_SQL = prior_sql()
_USED_SQL = f"SELECT EXISTS ({_PRIOR_SQL})"
_STORE_SQL = store_sql()


def in_use() -> ApiError:
    return ApiError(
        ErrorCode.IDEMPOTENCY_KEY_IN_USE,
        "A request with this Idempotency-Key is still in progress; retry shortly",
        headers={"Retry-After": "1"},
    )


def reused() -> ApiError:
    return ApiError(
        ErrorCode.IDEMPOTENCY_KEY_REUSED,
        "This Idempotency-Key was used for a different request",
    )


async def write_transaction(
    pool: asyncpg.Pool,
    answers: Answers,
    scope: Scope,
    effects: Effects | None,
    combined: Combined | None = None,
) -> web.Response:
    """Run `effects` in one transaction with the nonce claim and, given a key, the stored
    answer. An ApiError of a stored status raised by `effects` is an answer: it commits
    (the nonce stays used); any other exception rolls everything back. With a key and
    `combined`, that runs instead of the lookup, `effects` and the store: two round
    trips fewer."""
    async with pool.acquire() as conn, conn.transaction():
        if scope.key is None:
            if await conn.fetchval(CLAIM_NONCE_SQL, scope.service_id, scope.nonce) is None:
                raise Replayed
            assert effects is not None
            return await _answer(conn, effects)
        begin = await conn.fetchrow(
            _BEGIN_SQL, scope.service_id, scope.nonce, lock_id(scope.service_id, scope.key)
        )
        if not begin["fresh"]:
            raise Replayed
        if not begin["locked"]:
            metrics.IDEMPOTENCY_CONFLICTS.labels(scope.route, "in_use").inc()
            return in_use().response()
        if combined is not None:
            prior, response = await combined(conn)
        else:
            prior = await conn.fetchrow(_PRIOR_SQL, scope.service_id, scope.key)
        if prior is not None:
            return _replay(answers, scope, prior)
        if combined is not None:
            return response
        assert effects is not None
        response = await _answer(conn, effects)
        if response.status in STORED_STATUSES:
            await _store(conn, answers, scope, response)
        return response


async def _answer(conn: asyncpg.Connection, effects: Effects) -> web.Response:
    try:
        return await effects(conn)
    except ApiError as exc:
        if exc.status not in STORED_STATUSES:
            raise
        return exc.response()


async def _store(
    conn: asyncpg.Connection, answers: Answers, scope: Scope, response: web.Response
) -> None:
    stored = await conn.fetchval(
        _STORE_SQL,
        scope.service_id,
        scope.key,
        scope.request_hash,
        response.status,
        *stored_form(answers, scope, response),
        float(answers.ttl_seconds),
    )
    if stored is None:  # a live answer appeared despite the lock: never overwrite one
        raise RuntimeError("a live stored answer exists for a key whose lock was held")


def stored_form(answers: Answers, scope: Scope, response: web.Response) -> tuple[str, bytes]:
    """(kept headers as JSON text, sealed body) of an answer, as store_sql takes them."""
    assert scope.key is not None
    headers = {h: response.headers[h] for h in KEPT_HEADERS if h in response.headers}
    body = bytes(response.body or b"")  # json_response: always bytes
    return orjson.dumps(headers).decode(), answers.seal(scope.service_id, scope.key, body)


def _replay(answers: Answers, scope: Scope, prior: Mapping[str, Any]) -> web.Response:
    assert scope.key is not None
    if bytes(prior["request_hash"]) != scope.request_hash:
        metrics.IDEMPOTENCY_CONFLICTS.labels(scope.route, "reused").inc()
        return reused().response()
    metrics.IDEMPOTENT_REPLAYS.labels(scope.route).inc()
    body = answers.open(scope.service_id, scope.key, bytes(prior["body_sealed"]))
    headers = {**orjson.loads(prior["headers"]), REPLAYED_HEADER: "true"}
    return web.Response(
        body=body,
        status=prior["status"],
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


async def key_used(pool: asyncpg.Pool, service_id: str, key: str) -> bool:
    """Whether a live answer is stored under the key (a rejected request that reuses it)."""
    return await pool.fetchval(_USED_SQL, service_id, key)


async def delete_expired(pool: asyncpg.Pool, batch: int = 1000) -> int:
    # Small batches, like the nonces: no long lock, no huge transaction.
    status = await pool.execute(
        """DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
               SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))""",
        batch,
    )
    return int(status.split()[-1])


async def sweeper(pool: asyncpg.Pool, every: float = 60.0) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            deleted = await delete_expired(pool)
            while deleted > 0:
                await asyncio.sleep(0)  # let requests in between batches
                deleted = await delete_expired(pool)
        except Exception:  # the next sweep tries again; requests are unaffected
            log.warning("could not delete expired idempotency keys", exc_info=True)


@contextlib.asynccontextmanager
async def sweeping(pool: asyncpg.Pool) -> AsyncIterator[None]:
    task = asyncio.create_task(sweeper(pool))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""One write, one transaction: the nonce, the Idempotency-Key, the state, its outbox rows.

Every write route's request gets a `UnitOfWork`, and the rules of contract sections 2
and 12 hold here and nowhere else:

1. The request's nonce is claimed whatever happens: in the transaction that commits
   the write, or, for a request refused before its write (a bad body, a bad key), by
   `refuse`. A replayed nonce is answered first (`Replayed`), and a refused request
   that reuses a key with a stored answer differs from the stored request, which passed
   the same checks: `KeyReused`.
2. With a key, a transaction-level advisory lock on (service id, key) is tried, never
   waited for: not getting it means another request with that key is running
   (`KeyInUse`). The lock lives exactly as long as the transaction, so a worker killed
   mid-request frees the key the moment PostgreSQL ends it: nothing pending outlives a
   crash.
3. With the lock held, a stored answer is looked up in a new statement (a new snapshot
   under READ COMMITTED, so an answer committed just before the lock was granted is
   seen) and replayed, or `KeyReused` when the request differs.
4. The effects write the state and its outbox rows; the answer is stored (status,
   Location/ETag, body sealed with AES-GCM) in the same transaction, so a crash never
   keeps one without the other. The nonce claim commits with every answer, a 404, 409
   or 412 included: a captured retry cannot be replayed to read a stored answer.
5. After the commit, the relays are woken.

What a write answers is rendered by its caller (the API) into an `Answer` before the
commit, because a stored answer must be replayed byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import asyncpg
import orjson

from service import metrics
from service.auth.secretbox import SecretBox
from service.db import idempotency_keys, nonces
from service.db.connect import Connection
from service.db.customers import KeyedAnswers
from service.db.nonces import Replayed

# The first answer is stored when it is one of these; others (400, 401, 413, 415, 5xx)
# leave the key free for a corrected request.
STORED_STATUSES = frozenset({200, 201, 404, 409, 412})
KEPT_HEADERS = ("Location", "ETag")
_BOX_INFO = b"xcloud idempotent answers v1"  # its own key, not the service secrets' one

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Answer:
    """A write's answer: a status, a JSON body, and the headers kept with it."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    replayed: bool = False  # a stored answer, sent again


class KeyInUse(Exception):
    """Another request with this Idempotency-Key is running."""


class KeyReused(Exception):
    """This Idempotency-Key was used for a different request."""


class Waker(Protocol):
    def poke(self) -> None: ...


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


def fingerprint(method: str, path: str, body: object) -> bytes:
    """What makes two requests "the same": method, path, body as parsed JSON (key order
    and whitespace do not matter; orjson sorts keys at every depth)."""
    canonical = b"" if body is None else orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(method.encode() + b"\n" + path.encode() + b"\n" + canonical).digest()


@dataclass(frozen=True, slots=True)
class Request:
    """Who sent the write and what it is, as the unit of work needs it."""

    service_id: str
    nonce: str
    method: str
    path: str
    route: str  # the route's template: a bounded metrics label


class UnitOfWork:
    """One write request's transaction. `key` is set once the Idempotency-Key is valid."""

    def __init__(
        self, pool: asyncpg.Pool, answers: Answers, waker: Waker, request: Request
    ) -> None:
        self._pool = pool
        self._answers = answers
        self._waker = waker
        self.request = request
        self.key: str | None = None
        self.body: object = None  # the parsed JSON body: with the key, it names the request
        self.claimed = False  # the nonce was (or is being) claimed: never twice

    async def refuse(self) -> None:
        """For a request refused before its write: claim its nonce (`Replayed` if used),
        and raise `KeyReused` when its key has a stored answer."""
        self.claimed = True
        r = self.request
        async with self._pool.acquire() as conn:
            if not await nonces.claim_nonce(conn, r.service_id, r.nonce):
                raise Replayed
            if self.key is not None and await idempotency_keys.used(conn, r.service_id, self.key):
                self._conflict("reused")
                raise KeyReused

    async def run(
        self,
        effects: Callable[[Connection], Awaitable[R]],
        render: Callable[[R], Answer],
    ) -> Answer:
        """`effects` (state and outbox rows) and the answer `render` makes of their
        result, in one transaction with the nonce and the key's stored answer. Any
        exception from them rolls all of it back, the nonce claim included."""
        self.claimed = True
        r = self.request
        async with self._pool.acquire() as conn, conn.transaction():
            if self.key is None:
                if not await nonces.claim_nonce(conn, r.service_id, r.nonce):
                    raise Replayed
                outcome: Answer | Exception = render(await effects(conn))
            else:
                outcome = await self._keyed(conn, self.key, effects, render)
        return self._finish(outcome)

    async def _keyed(
        self,
        conn: Connection,
        key: str,
        effects: Callable[[Connection], Awaitable[R]],
        render: Callable[[R], Answer],
    ) -> Answer | Exception:
        refused = await self._begin(conn, key)
        if refused is not None:
            return refused
        request_hash = fingerprint(self.request.method, self.request.path, self.body)
        prior = await conn.fetchrow(idempotency_keys.PRIOR_SQL, self.request.service_id, key)
        if prior is not None:
            return self._replay(key, request_hash, prior)
        answer = render(await effects(conn))
        if answer.status in STORED_STATUSES:
            await self._store(conn, key, request_hash, answer)
        return answer

    def _finish(self, outcome: Answer | Exception) -> Answer:
        """After the commit: a refusal that committed its nonce claim is raised now."""
        if isinstance(outcome, Exception):
            raise outcome
        if not outcome.replayed:
            self._waker.poke()  # committed: the relays may publish its events now
        return outcome

    async def statement(
        self,
        write: Callable[[asyncpg.Pool, str, str], Awaitable[R]],
        *,
        adds_events: bool = True,
    ) -> R:
        """A request without a key done in one statement that claims the nonce itself
        (`write(pool, service_id, nonce)` raises `Replayed`): one round trip."""
        self.claimed = True
        result = await write(self._pool, self.request.service_id, self.request.nonce)
        if adds_events:
            self._waker.poke()
        return result

    async def keyed_statement(
        self,
        outcomes: tuple[Answer, Answer],
        write: Callable[[Connection, KeyedAnswers], Awaitable[asyncpg.Record]],
    ) -> Answer:
        """A keyed write whose one statement looks the key up, writes unless an answer
        is stored, and stores its own: `outcomes` are its two possible answers (done,
        not done), sealed ahead; the statement's row says which happened (`created`) or
        holds the stored answer's columns (`request_hash` ...)."""
        assert self.key is not None
        self.claimed = True
        r, key = self.request, self.key
        request_hash = fingerprint(r.method, r.path, self.body)
        done, not_done = outcomes
        headers, done_body = self._stored_form(key, done)
        async with self._pool.acquire() as conn, conn.transaction():
            outcome: Answer | Exception | None = await self._begin(conn, key)
            if outcome is None:
                row = await write(
                    conn,
                    KeyedAnswers(
                        key,
                        request_hash,
                        headers,
                        done_body,
                        self._stored_form(key, not_done)[1],
                        self._answers.ttl_seconds,
                    ),
                )
                if row["request_hash"] is not None:  # a stored answer: nothing written
                    outcome = self._replay(key, request_hash, row)
                else:
                    outcome = done if row["created"] else not_done
        return self._finish(outcome)

    async def _begin(self, conn: Connection, key: str) -> KeyInUse | None:
        """Claim the nonce (`Replayed` when used) and try the key's lock."""
        r = self.request
        begin = await conn.fetchrow(
            idempotency_keys.BEGIN_SQL,
            r.service_id,
            r.nonce,
            idempotency_keys.lock_id(r.service_id, key),
        )
        assert begin is not None  # the statement always returns one row
        if not begin["fresh"]:
            raise Replayed
        if not begin["locked"]:
            self._conflict("in_use")
            return KeyInUse()
        return None

    async def _store(self, conn: Connection, key: str, request_hash: bytes, answer: Answer) -> None:
        stored = await conn.fetchval(
            idempotency_keys.STORE_SQL,
            self.request.service_id,
            key,
            request_hash,
            answer.status,
            *self._stored_form(key, answer),
            float(self._answers.ttl_seconds),
        )
        if stored is None:  # a live answer appeared despite the lock: never overwrite one
            raise RuntimeError("a live stored answer exists for a key whose lock was held")

    def _stored_form(self, key: str, answer: Answer) -> tuple[str, bytes]:
        """(kept headers as JSON text, sealed body), as idempotency_keys stores them."""
        headers = {h: answer.headers[h] for h in KEPT_HEADERS if h in answer.headers}
        sealed = self._answers.seal(self.request.service_id, key, answer.body)
        return orjson.dumps(headers).decode(), sealed

    def _replay(self, key: str, request_hash: bytes, prior: asyncpg.Record) -> Answer | KeyReused:
        if bytes(prior["request_hash"]) != request_hash:
            self._conflict("reused")
            return KeyReused()
        metrics.IDEMPOTENT_REPLAYS.labels(self.request.route).inc()
        sealed = bytes(prior["body_sealed"])
        return Answer(
            status=int(prior["status"]),
            body=self._answers.open(self.request.service_id, key, sealed),
            headers=orjson.loads(prior["headers"]),
            replayed=True,
        )

    def _conflict(self, kind: str) -> None:
        metrics.IDEMPOTENCY_CONFLICTS.labels(self.request.route, kind).inc()

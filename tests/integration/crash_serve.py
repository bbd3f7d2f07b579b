"""`xcloud serve` with one fault for the crash tests, injected here and nowhere in the
service: the worker SIGKILLs itself during a write sent with an Idempotency-Key,

- XCLOUD_TEST_KILL=after-commit: once its transaction has committed, before the answer
  is sent (the caller sees a dropped connection, the database has everything);
- XCLOUD_TEST_KILL=before-commit: with the effects written and the key's lock held, before
  the commit (PostgreSQL must roll back and free the key).

    python -m tests.integration.crash_serve serve --workers 1 --no-relay
"""

from __future__ import annotations

import os
import signal
import sys

from service import cli
from service.usecases import unit_of_work

MODE = os.environ["XCLOUD_TEST_KILL"]
_write_transaction = unit_of_work.write_transaction


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def write_transaction(pool, answers, scope, effects, combined=None):
    if scope.key is None:
        return await _write_transaction(pool, answers, scope, effects, combined)
    if MODE == "before-commit":

        async def dying(conn):
            await (combined or effects)(conn)  # written, not committed
            _die()

        if combined is not None:
            return await _write_transaction(pool, answers, scope, effects, dying)
        return await _write_transaction(pool, answers, scope, dying)
    response = await _write_transaction(pool, answers, scope, effects, combined)
    _die()  # committed: write_transaction returns only after its transaction ends
    return response


unit_of_work.write_transaction = write_transaction

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))

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
from service.usecases.unit_of_work import UnitOfWork

MODE = os.environ["XCLOUD_TEST_KILL"]
_keyed = UnitOfWork._keyed
_keyed_statement = UnitOfWork.keyed_statement
_finish = UnitOfWork._finish


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def keyed(self, conn, key, effects, render):
    outcome = await _keyed(self, conn, key, effects, render)
    if MODE == "before-commit":
        _die()  # written, not committed
    return outcome


async def keyed_statement(self, outcomes, write):
    if MODE != "before-commit":
        return await _keyed_statement(self, outcomes, write)

    async def dying(conn, stored):
        await write(conn, stored)  # written, not committed
        _die()

    return await _keyed_statement(self, outcomes, dying)


def finish(self, outcome):
    answer = _finish(self, outcome)
    if MODE != "before-commit" and self.key is not None:
        _die()  # committed: _finish runs only after its transaction ends
    return answer


UnitOfWork._keyed = keyed
UnitOfWork.keyed_statement = keyed_statement
UnitOfWork._finish = finish

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))

"""The exit codes of every `xcloud` command, defined once, with the text `--help` prints.

Contract section 11 fixes one of them (a missing or bad variable: 2); the rest follow the
callers' tools, which documented theirs first. One guard, `run()`, turns an Exit, Ctrl-C
and a closed stdout into these codes for every command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    INTERRUPTED = 130


MEANING = {
    ExitCode.OK: "done (serve and relay: stopped gracefully by SIGTERM or Ctrl-C)",
    ExitCode.FAILED: "refused or failed: the server answered an error (its JSON error body "
    'goes to stderr, then a last line "error: CODE"); what was asked about does not exist '
    "(customers exists: the missing ids on stdout; keys verify; clients revoke); "
    "import: some lines failed; relay: the broker refused for good (a bad topic setting)",
    ExitCode.USAGE: "usage or configuration: a bad argument, a missing or bad variable, an "
    "unreadable input file, a package without migrations (one line on stderr names it)",
    ExitCode.UNREACHABLE: "the service could not be reached at XCLOUD_URL (the server's own "
    "commands wait for PostgreSQL and Kafka instead, saying so on stderr)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C) before the command finished; "
    "import: run again to resume",
}


def help_text() -> str:
    """The `exit codes:` section of every command's --help."""
    import textwrap

    lines = ["exit codes:"]
    for code, meaning in MEANING.items():
        wrapped = textwrap.wrap(meaning, 72)
        lines.append(f"  {code.value:<4} {wrapped[0]}")
        lines += [f"       {more}" for more in wrapped[1:]]
    return "\n".join(lines) + "\n"


class Exit(Exception):
    """Stop the command with this exit code, after one line on stderr."""

    def __init__(self, code: ExitCode, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command: Exit(code, line) -> that line on stderr and the code; Ctrl-C -> 130
    without a traceback; a reader that closed stdout (`xcloud fake 1000000 | head`) -> 0."""
    try:
        return command(args)
    except Exit as exc:
        if exc.message:
            prefix = "" if exc.message.startswith("error: ") else "xcloud: "
            print(prefix + exc.message, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK

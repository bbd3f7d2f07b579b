"""One exit-code convention for every `xcloud` command (service/exit_codes.py)."""

from __future__ import annotations

import argparse

import pytest

from service import cli, exit_codes
from service.exit_codes import Exit, ExitCode


def _run(command) -> int:
    return exit_codes.run(command, argparse.Namespace())


def test_the_guard_maps_exit_ctrl_c_and_success(capsys):
    def refused(_):
        raise Exit(ExitCode.FAILED, "no active credential for svc")

    def interrupted(_):
        raise KeyboardInterrupt

    assert _run(refused) == 1
    assert capsys.readouterr().err == "xcloud: no active credential for svc\n"
    assert _run(interrupted) == 130
    assert capsys.readouterr().err == ""  # no traceback
    assert _run(lambda _: ExitCode.OK) == 0


def test_a_server_error_line_keeps_its_own_prefix(capsys):
    def answered(_):
        raise Exit(ExitCode.FAILED, "error: INVALID_SIGNATURE")

    assert _run(answered) == 1
    assert capsys.readouterr().err == "error: INVALID_SIGNATURE\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["migrate", "--help"],
        ["clients", "revoke", "--help"],
        ["customers", "--help"],
        ["import", "--help"],
    ],
)
def test_every_command_documents_the_same_codes(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for code in ExitCode:
        assert f" {code.value} " in out
    assert " ".join(exit_codes.help_text().split()) in out


def test_server_help_lists_every_variable_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "XCLOUD_RELAY_POLL_MAX_MS" in out and "2000" in out
    assert "XCLOUD_LIMIT_MAX_DATA_POINTS" in out and "1000000" in out

"""The folders of service/ are the stages of the flow; each may import only the stages
its __init__ docstring names. Read from the source with ast: nothing is imported."""

from __future__ import annotations

import ast
import pathlib

import pytest

SERVICE = pathlib.Path(__file__).resolve().parents[2] / "service"
TOP_LEVEL = {"config", "logs", "metrics", "cli", "server", "error_codes", "exit_codes"}
ALLOWED = {
    "domain": set(),
    "db": {"domain", "auth"},
    "auth": {"db", "error_codes"},
    "usecases": {"domain", "db", "auth", "metrics"},
    "outbox": {"db", "domain", "config", "metrics", "server"},
    "api": {"auth", "config", "db", "domain", "error_codes", "metrics", "outbox", "usecases"},
    "tools": {"api", "auth", "domain", "exit_codes"},
}
NO_THIRD_PARTY = {"domain": {"aiohttp", "asyncpg", "aiokafka"}, "usecases": {"aiohttp"}}


def _imports(path: pathlib.Path) -> set[str]:
    """Top-level names imported by a module: `service.x` as "x", others as themselves."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "service":
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
                found.update(f"service.{n}" for n in names)
            else:
                found.add(parts[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return found


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_each_stage_imports_only_what_its_docstring_allows(stage):
    wrong = {}
    for path in (SERVICE / stage).glob("*.py"):
        stages = {i.removeprefix("service.") for i in _imports(path) if i.startswith("service.")}
        bad = stages - ALLOWED[stage] - {stage}
        bad |= _imports(path) & NO_THIRD_PARTY.get(stage, set())
        if bad:
            wrong[path.name] = sorted(bad)
    assert wrong == {}


def test_the_server_never_imports_the_callers_tools():
    importers = {
        str(p.relative_to(SERVICE))
        for p in SERVICE.rglob("*.py")
        if "service.tools" in _imports(p) and p.parent.name != "tools"
    }
    assert importers <= {"cli.py"}  # `xcloud` carries the customer commands


def test_every_stage_says_what_it_may_import():
    for stage in ALLOWED:
        doc = ast.get_docstring(ast.parse((SERVICE / stage / "__init__.py").read_text()))
        assert doc and ("import" in doc), stage
    assert set(ALLOWED) | TOP_LEVEL | {"sql", "__init__"} >= {
        p.stem for p in SERVICE.iterdir() if not p.name.startswith("__pycache__")
    }

"""All of llmq's SQL lives in llmq/store: no other module builds a statement with SQLAlchemy
(`text`, `select`, `insert`, `update`, `delete`) or runs one (`.execute(stmt)`,
`.exec_driver_sql`, `.executemany`). Read from the source (ast), so nothing is imported.

Redis pipelines also have an `.execute()`, but it takes no argument, while running SQL
always passes the statement: only calls with an argument count.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The product's code: the package, and the frameworks' thin entry points beside it.
# migrations/ (Alembic, installed as llmq.migrations) is SQL by nature and is not scanned.
SCANNED = ("llmq", "api", "workers", "tasks")
STORE = REPO / "llmq" / "store"

STATEMENT_BUILDERS = {"text", "select", "insert", "update", "delete"}
RUNNERS = {"execute", "exec_driver_sql", "executemany"}

# Modules allowed to run SQL outside the store, each for a reason the store cannot serve.
ALLOWED = {
    # The embedded server's bootstrap: creates the empty database (raw psycopg on the server's
    # `postgres` maintenance database) before llmq's engine or schema exist; localstack is
    # dev/test tooling that the product code never imports.
    "llmq/localstack/embedded.py",
}


def sql_outside_store(source: str) -> list[str]:
    """What in `source` builds or runs SQL, as 'line: what' (empty if nothing does)."""
    tree = ast.parse(source)
    found: list[str] = []
    sqlalchemy_modules: set[str] = set()  # names bound by `import sqlalchemy[.x] [as y]`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [
                f"{node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name in STATEMENT_BUILDERS
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sqlalchemy":
                    sqlalchemy_modules.add(alias.asname or "sqlalchemy")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in STATEMENT_BUILDERS
            and isinstance(node.value, ast.Name)
            and node.value.id in sqlalchemy_modules
        ):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in RUNNERS
            and (node.args or node.keywords)
        ):
            found.append(f"{node.lineno}: .{node.func.attr}(...)")
    return found


def _modules() -> list[Path]:
    return sorted(
        path
        for root in SCANNED
        for path in (REPO / root).rglob("*.py")
        if not path.is_relative_to(STORE)
    )


def test_no_module_outside_the_store_builds_or_runs_sql() -> None:
    offenders = {
        str(path.relative_to(REPO)): found
        for path in _modules()
        if (found := sql_outside_store(path.read_text(encoding="utf-8")))
        and str(path.relative_to(REPO)) not in ALLOWED
    }
    assert offenders == {}, "move this SQL into a function of llmq/store: " + repr(offenders)


def test_every_allowed_module_still_needs_its_exception() -> None:
    # An exception whose SQL has gone (moved into the store) must leave the list with it.
    for name in ALLOWED:
        assert sql_outside_store((REPO / name).read_text(encoding="utf-8")), name


def test_the_check_sees_each_way_of_writing_sql() -> None:
    assert sql_outside_store("from sqlalchemy import Engine, text\n") == [
        "1: from sqlalchemy import text"
    ]
    assert sql_outside_store("from sqlalchemy.sql import select\n")
    assert sql_outside_store("from sqlalchemy.dialects.postgresql import insert\n")
    assert sql_outside_store("import sqlalchemy as sa\nq = sa.select(1)\n")
    assert sql_outside_store("conn.execute(stmt)\n") == ["1: .execute(...)"]
    assert sql_outside_store("conn.exec_driver_sql('SELECT 1')\n")
    assert sql_outside_store("c.execute(statement=s)\n")


def test_the_check_leaves_non_sql_code_alone() -> None:
    source = (
        "from sqlalchemy import Engine\n"
        "from sqlalchemy.exc import SQLAlchemyError\n"
        "import sqlalchemy\n"
        "pipe.execute()\n"  # a Redis pipeline
        "path.read_text()\n"
        "sqlalchemy.exc.OperationalError\n"
    )
    assert sql_outside_store(source) == []

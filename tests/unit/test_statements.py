"""Every SQL statement triobus runs, rendered whole into tests/sql/ (golden files).

Statements are composed from typed builders (`batch_counts`, `replies.insert_replies`,
`audit.insert_sent_events`); the golden files let a reviewer read and diff each one as
PostgreSQL receives it. A statement is a public upper-case module constant of a
statement module whose text starts with an SQL verb. After changing one, regenerate the
files and review their diff:

    TRIOBUS_WRITE_SQL=1 ./run test tests/unit/test_statements.py
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

from triobus.persistence import (
    audit,
    batch_operations,
    batches,
    commands,
    gauges,
    queue,
    replies,
    retention,
    schedules,
    schema,
    troubleshooting,
)

GOLDEN = Path(__file__).parent.parent / "sql"
MODULES = (
    audit,
    batch_operations,
    batches,
    commands,
    gauges,
    queue,
    replies,
    retention,
    schedules,
    schema,
    troubleshooting,
)
VERBS = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "COPY", "CREATE")


def statements(module: ModuleType) -> dict[str, str]:
    found = {
        name: value.strip()
        for name, value in vars(module).items()
        if name.isupper()
        and not name.startswith("_")
        and isinstance(value, str)
        and value.split(maxsplit=1)[:1] in ([verb] for verb in VERBS)
    }
    if module is commands:  # a template: shown with every filter given
        every = " AND ".join(commands.COMMAND_FILTERS.values())
        found["SELECT_COMMANDS"] = found["SELECT_COMMANDS"].format(filters=every)
    return found


def rendered(module: ModuleType) -> str:
    name = module.__name__.rsplit(".", 1)[1]
    header = f"-- Statements of triobus.persistence.{name}, rendered by {Path(__file__).name}.\n"
    return header + "".join(
        f"\n-- name: {constant}\n{sql};\n" for constant, sql in sorted(statements(module).items())
    )


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_statement_matches_its_golden_file(module: ModuleType) -> None:
    path = GOLDEN / f"{module.__name__.rsplit('.', 1)[1]}.sql"
    if os.environ.get("TRIOBUS_WRITE_SQL"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(rendered(module), encoding="utf-8")
    assert path.read_text(encoding="utf-8") == rendered(module), (
        f"{path} differs from the statements: if the change is meant, regenerate it"
        " (TRIOBUS_WRITE_SQL=1 ./run test tests/unit/test_statements.py) and review the diff"
    )


def test_the_statements_are_found() -> None:
    found = {m.__name__.rsplit(".", 1)[1]: sorted(statements(m)) for m in MODULES}
    assert "ACK_IF_CLAIMED" in found["queue"] and "CLAIM_COMMANDS" in found["queue"]
    assert {"RETRY_FROM_TSQ", "CANCEL_FROM_TSQ", "COMPLETE_FROM_TSQ"} <= set(
        found["troubleshooting"]
    )
    assert all(found.values()), found
    assert not {n for names in found.values() for n in names if n.startswith("_")}


def test_psycopg_caches_the_conversion_of_every_statement_the_runtime_runs() -> None:
    """The driver raises psycopg's limit (4,096 characters by default) above our longest
    statement: converting the claim or an ack afresh costs about 60 us each time."""
    from psycopg import _queries

    import triobus.persistence.driver  # noqa: F401 - raises the limit when imported

    longest = max(len(sql) for module in MODULES for sql in statements(module).values())
    assert longest <= _queries.MAX_CACHED_STATEMENT_LENGTH

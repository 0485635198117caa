"""The layers' boundaries: what persistence's SQL, records and validation may import.

Only the driver, the pool, the databases helpers and the embedded cluster run on Trio;
the statements, records and checks import no Trio (nor the actors), so that code outside
Trio (asyncio or sync producers) can use them. `./run lint` checks
the same rules statically (import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

import subprocess
import sys

TRIO_FREE = (
    "audit",
    "backoff",
    "batch_counts",
    "batch_operations",
    "batches",
    "commands",
    "connection",
    "console",
    "cron",
    "errors",
    "gauges",
    "json_values",
    "literals",
    "new_commands",
    "notifications",
    "outage",
    "producer",
    "queue",
    "records",
    "replies",
    "retention",
    "schedules",
    "schema",
    "tracing",
    "troubleshooting",
    "validation",
)


def test_the_statements_records_and_checks_import_no_trio_nor_the_actors() -> None:
    imports = "; ".join(f"import triobus.persistence.{name}" for name in TRIO_FREE)
    check = (
        f"{imports}; import sys; "
        "print(sorted(m for m in sys.modules if m == 'trio' or m.startswith(('trio.',"
        " 'trio_asyncio', 'triobus.actors', 'triobus.persistence.driver'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_the_driver_does_import_trio() -> None:
    """The check above would pass vacuously if importing did nothing: it does not."""
    check = "import triobus.persistence.pool, sys; print('trio' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"

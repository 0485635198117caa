"""The pytest plugin as an application uses it: the README's "Testing your handlers"
files, written out as they stand, run the application's own handler in a pytest of
their own; and the fixtures take a factory too."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from triobus.actors import Command, CommandStatus, HandlerContext, HandlerRegistry, Runtime
from triobus.actors.pytest_plugin import SessionServer

README = Path(__file__).parents[2] / "README.md"


def readme_files() -> dict[str, str]:
    """The fenced blocks of the section whose first line names their file."""
    text = README.read_text()
    section = text[text.index("## Testing your handlers") :]
    section = section[: section.index("\n## ", 1)]
    files = {}
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", section, re.DOTALL):
        first, _, _ = block.partition("\n")
        files[first.removeprefix("# ").split()[0]] = block
    return files


async def test_the_readme_example_runs_the_applications_own_handler(
    triobus_server: SessionServer, tmp_path: Path
) -> None:
    files = readme_files()
    assert set(files) == {
        "invoicing/handlers.py",
        "pyproject.toml",
        "conftest.py",
        "test_invoicing.py",
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    (tmp_path / "invoicing" / "__init__.py").write_text("")
    result = await trio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=str(tmp_path),
        env={"TRIOBUS_DSN": triobus_server.admin_dsn, "PATH": "/usr/bin:/bin"},
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
    )
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "1 passed" in output


@asynccontextmanager
async def application(runtime: Runtime) -> AsyncIterator[HandlerRegistry]:
    """A factory whose handler needs a dependency that is open only inside it."""
    dependency = {"open": True}
    registry = HandlerRegistry()

    @registry.handler("d", "Use")
    async def use(command: Command, ctx: HandlerContext) -> dict[str, bool]:
        return {"open": dependency["open"]}

    try:
        yield registry
    finally:
        dependency["open"] = False


@pytest.fixture
def triobus_registry() -> object:
    return application


async def test_a_factory_given_as_the_registry_runs_its_handlers(
    triobus_runtime: Runtime,
) -> None:
    bus = triobus_runtime.bus
    sent = await bus.send("d", "Use", uuid.uuid4(), {})
    statistics = await triobus_runtime.drain("d")
    assert statistics.completed == 1
    command = await bus.get_command("d", sent.command_id)
    assert command is not None
    assert (command.status, command.result) == (CommandStatus.COMPLETED, {"open": True})
    assert triobus_runtime.statistics().workers == ()  # drain stopped its worker

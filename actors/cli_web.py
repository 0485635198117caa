"""`triobus web`: the operator's console, served until SIGINT or SIGTERM.

It refuses to start without credentials: `$TRIOBUS_WEB_USER` and `$TRIOBUS_WEB_PASSWORD`,
a users file (`--users-file` or `$TRIOBUS_WEB_USERS_FILE`, lines of `name:password`,
mode 600), or a bearer token (`$TRIOBUS_WEB_TOKEN`); or with `--no-auth`, which serves
only a loopback address. It never migrates the schema and never prunes.
"""

from __future__ import annotations

import argparse
import logging
import signal

import trio

from triobus.actors.cli_common import UsageError
from triobus.actors.log_format import LogFormat, configure_logging
from triobus.actors.runtime import open_runtime
from triobus.persistence.errors import ValidationError

logger = logging.getLogger("triobus.web")


def add_web_arguments(web: argparse.ArgumentParser) -> None:
    web.add_argument(
        "--bind", default="127.0.0.1:8080", help="HOST:PORT to serve (default: 127.0.0.1:8080)"
    )
    web.add_argument("--users-file", help="a file of name:password lines, mode 600")
    web.add_argument(
        "--no-auth",
        action="store_true",
        help="no login, every action by 'console': only on a loopback address",
    )
    web.add_argument("--read-only", action="store_true", help="show everything, change nothing")
    web.add_argument(
        "--hide-payloads",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="never show the data, results or error details of this domain, repeatable",
    )
    web.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="URL",
        help="also accept actions from pages of this origin (https://ops.example.com), for a"
        " proxy that rewrites Host; repeatable",
    )
    web.add_argument("--log-format", type=LogFormat, default=LogFormat.TEXT, help="text or json")


async def run_web(args: argparse.Namespace, dsn: str) -> int:
    try:
        from triobus.actors.console import (
            ConsoleSettings,
            check_bind,
            credentials_from_environment,
            serve_console,
        )
    except ImportError as ex:
        raise UsageError(
            f"triobus web needs the web extra: pip install 'triobus[web]' ({ex})"
        ) from None
    configure_logging("INFO", args.log_format)
    try:
        users, tokens = credentials_from_environment(users_file=args.users_file)
        settings = ConsoleSettings(
            users=users,
            tokens=tokens,
            no_auth=args.no_auth,
            read_only=args.read_only,
            hidden_payload_domains=args.hide_payloads,
            origins=args.origin,
        )
        check_bind(args.bind, no_auth=args.no_auth)
    except ValidationError as ex:
        raise UsageError(str(ex)) from None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def first_signal() -> None:
            signum = await anext(aiter(signals))
            logger.info("received %s: stopping the console", signal.Signals(signum).name)

        async with (
            open_runtime(dsn, migrate=False, retention=None) as runtime,
            trio.open_nursery() as nursery,
        ):
            addresses = await nursery.start(
                lambda task_status: serve_console(
                    runtime,
                    settings,
                    bind=args.bind,
                    shutdown_trigger=first_signal,
                    task_status=task_status,
                )
            )
            logger.info(
                "console at %s (%s%s)",
                ", ".join(addresses),
                "no login" if settings.no_auth else f"{len(users)} user(s), {len(tokens)} token(s)",
                ", read-only" if settings.read_only else "",
            )
    return 0

"""The `triobus` operator command line.

    triobus [--dsn DSN] [--json] migrate | worker | tsq ... | batch ... | command ... |
                                 stats | prune | schedule list | replies read

Every command needs a database: `--dsn`, else `$TRIOBUS_DSN` (the embedded cluster is for
the demo and tests, not for operators). Output is a table for people, or JSON with
`--json`. Expected errors print one line and exit with status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from triobus.actors.application import ApplicationError
from triobus.actors.cli_common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Parser,
    UsageError,
    duration,
    one_line,
)
from triobus.actors.cli_web import add_web_arguments, run_web
from triobus.actors.cli_worker import add_worker_arguments, run_worker
from triobus.actors.maintenance import Pruner, RetentionPolicy
from triobus.actors.runtime import DSN_ENV, Runtime, open_runtime
from triobus.persistence.databases import migrate
from triobus.persistence.errors import BatchNotFoundError, TriobusError, ValidationError
from triobus.persistence.records import BatchMetadata, CommandStatus
from triobus.persistence.retention import Removed
from triobus.persistence.schedules import select_schedules
from triobus.persistence.schema import available_migrations
from triobus.persistence.validation import check_dsn, check_name, check_seconds

Action = Callable[[argparse.Namespace, Runtime], Awaitable[Any]]


def _plain(value: Any) -> Any:
    """Records and enums as JSON-ready values."""
    if attrs.has(type(value)):
        return {k: _plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(value: Any) -> str:
    if value is None:
        return "-"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _emit(args: argparse.Namespace, value: Any, columns: Sequence[str] | None = None) -> None:
    plain = _plain(value)
    if args.json:
        print(json.dumps(plain, indent=2, sort_keys=True))
    elif columns is not None:
        print(_table(plain, columns))
    elif isinstance(plain, dict):  # one record: every value whole
        width = max(len(k) for k in plain)
        for key, item in plain.items():
            print(f"{key.ljust(width)}  {_whole(item)}")
    else:
        print(plain)


# -- actions ------------------------------------------------------------------------------

TSQ_COLUMNS = (
    "command_id",
    "command_type",
    "error_code",
    "error_message",
    "attempts",
    "entered_at",
)


async def tsq_list(args: argparse.Namespace, runtime: Runtime) -> None:
    items = await runtime.tsq.list_troubleshooting(
        args.domain, command_type=args.type, limit=args.limit, offset=args.offset
    )
    _emit(args, items, TSQ_COLUMNS)


async def tsq_count(args: argparse.Namespace, runtime: Runtime) -> None:
    count = await runtime.tsq.count_troubleshooting(args.domain, command_type=args.type)
    _emit(args, {"domain": args.domain, "count": count} if args.json else count)


async def tsq_retry(args: argparse.Namespace, runtime: Runtime) -> None:
    data = None if args.data is None else _json_object("--data", args.data)
    await runtime.tsq.operator_retry(
        args.domain, args.command_id, data=data, operator=_operator(args)
    )
    _emit(args, {"command_id": args.command_id, "action": "retried"})


def _json_object(option: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as ex:
        raise UsageError(f"{option} is not valid JSON: {ex}") from None
    except RecursionError:
        raise UsageError(f"{option} is nested too deeply to be read") from None


def _operator(args: argparse.Namespace) -> str | None:
    """`--operator`, else the login name: the audit trail says who acted."""
    if args.operator is not None:
        return str(args.operator)
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name known (a container without one)
        return None


async def tsq_cancel(args: argparse.Namespace, runtime: Runtime) -> None:
    await runtime.tsq.operator_cancel(
        args.domain, args.command_id, args.reason, operator=_operator(args)
    )
    _emit(args, {"command_id": args.command_id, "action": "canceled"})


async def tsq_complete(args: argparse.Namespace, runtime: Runtime) -> None:
    result = None if args.result is None else _json_object("--result", args.result)
    await runtime.tsq.operator_complete(
        args.domain, args.command_id, result_data=result, operator=_operator(args)
    )
    _emit(args, {"command_id": args.command_id, "action": "completed"})


async def tsq_retry_all(args: argparse.Namespace, runtime: Runtime) -> None:
    count = await runtime.tsq.retry_all(
        args.domain, command_type=args.type, operator=_operator(args)
    )
    _emit(args, {"domain": args.domain, "retried": count})


async def tsq_cancel_all(args: argparse.Namespace, runtime: Runtime) -> None:
    count = await runtime.tsq.cancel_all(
        args.domain, args.reason, command_type=args.type, operator=_operator(args)
    )
    _emit(args, {"domain": args.domain, "canceled": count})


async def command_show(args: argparse.Namespace, runtime: Runtime) -> None:
    command = await runtime.bus.get_command(args.domain, args.command_id)
    if command is None:
        raise TriobusError(f"command {args.command_id} not found in domain {args.domain!r}")
    trail = await runtime.bus.get_audit_trail(args.command_id, domain=args.domain)
    shown = _plain(command)
    if command.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE:
        del shown["visible_at"]  # it waits for an operator, not for a time
    _emit_with_trail(args, "command", shown, trail)


COMMAND_COLUMNS = ("command_id", "command_type", "status", "attempts", "batch_id", "created_at")


async def command_list(args: argparse.Namespace, runtime: Runtime) -> None:
    found = await runtime.bus.query_commands(
        domain=args.domain,
        status=args.status,
        command_type=args.type,
        correlation_id=args.correlation_id,
        batch_id=args.batch_id,
        limit=args.limit,
        offset=args.offset,
    )
    _emit(args, found, COMMAND_COLUMNS if args.domain else ("domain", *COMMAND_COLUMNS))


STATS_COLUMNS = (
    "domain",
    "pending",
    "in_progress",
    "completed",
    "failed",
    "canceled",
    "in_troubleshooting_queue",
    "oldest_pending_seconds",
)


async def stats(args: argparse.Namespace, runtime: Runtime) -> None:
    found = await runtime.bus.domain_statistics(args.domain)
    if not args.json:
        found = [  # seconds to one decimal for people
            attrs.evolve(s, oldest_pending_seconds=round(s.oldest_pending_seconds, 1))
            if s.oldest_pending_seconds is not None
            else s
            for s in found
        ]
    _emit(args, found, STATS_COLUMNS)


def _emit_with_trail(args: argparse.Namespace, kind: str, record: Any, trail: Any) -> None:
    """A record, then its audit events (one JSON document with --json)."""
    if args.json:
        _emit(args, {kind: record, "audit": trail})
        return
    _emit(args, record)
    print()
    _emit(args, trail, ("audit_id", "occurred_at", "event_type", "details"))


BATCH_COLUMNS = (
    "batch_id",
    "name",
    "status",
    "total_count",
    "completed_count",
    "failed_count",
    "canceled_count",
    "in_troubleshooting_count",
    "created_at",
)


async def batch_list(args: argparse.Namespace, runtime: Runtime) -> None:
    found = await runtime.bus.list_batches(
        args.domain, status=args.status, limit=args.limit, offset=args.offset
    )
    _emit(args, found, BATCH_COLUMNS)


async def _existing_batch(args: argparse.Namespace, runtime: Runtime) -> BatchMetadata:
    batch = await runtime.bus.get_batch(args.domain, args.batch_id)
    if batch is None:
        raise BatchNotFoundError(args.domain, args.batch_id)
    return batch


FOLLOW_UP_COLUMNS = ("event", "domain", "command_type", "command_id", "sent", "status")


async def _follow_up_rows(batch: BatchMetadata, runtime: Runtime) -> list[dict[str, Any]]:
    """The batch's follow-up commands: whether each was sent, and its status now."""
    rows = []
    for follow_up in batch.follow_ups:
        command = (
            await runtime.bus.get_command(follow_up.command.domain, follow_up.command_id)
            if follow_up.sent
            else None
        )
        rows.append(
            {
                "event": follow_up.event,
                "domain": follow_up.command.domain,
                "command_type": follow_up.command.command_type,
                "command_id": follow_up.command_id,
                "sent": follow_up.sent,
                "status": None if command is None else command.status,
            }
        )
    return rows


async def batch_show(args: argparse.Namespace, runtime: Runtime) -> None:
    batch = await _existing_batch(args, runtime)
    follow_ups = await _follow_up_rows(batch, runtime)
    trail = await runtime.bus.get_audit_trail(batch.batch_id, domain=args.domain)
    shown = _plain(batch)
    del shown["follow_ups"]  # a table of their own
    if args.json:
        _emit(args, {"batch": shown, "follow_ups": follow_ups, "audit": trail})
        return
    _emit(args, shown)
    print()
    _emit(args, follow_ups, FOLLOW_UP_COLUMNS)
    print()
    _emit(args, trail, ("audit_id", "occurred_at", "event_type", "details"))


async def batch_cancel(args: argparse.Namespace, runtime: Runtime) -> None:
    count = await runtime.bus.cancel_batch(
        args.domain, args.batch_id, reason=args.reason, operator=_operator(args)
    )
    _emit(args, {"batch_id": args.batch_id, "action": "canceled", "members_canceled": count})


async def batch_retry(args: argparse.Namespace, runtime: Runtime) -> None:
    count = await runtime.tsq.retry_batch(args.domain, args.batch_id, operator=_operator(args))
    _emit(args, {"batch_id": args.batch_id, "action": "retried", "members_retried": count})


async def batch_close(args: argparse.Namespace, runtime: Runtime) -> None:
    completed = await runtime.bus.close_batch(args.domain, args.batch_id)
    _emit(args, {"batch_id": args.batch_id, "action": "closed", "completed": completed})


def progress_line(batch: BatchMetadata, rate: float, width: int = 30) -> str:
    """One line of `batch watch`: bar, done/total, failures, TSQ, rate and ETA."""
    done = batch.completed_count + batch.failed_count + batch.canceled_count
    # an open batch may have no command yet; one with none that completed is all done
    part, total = (done, batch.total_count) if batch.total_count else (int(batch.is_final), 1)
    filled = width * part // total
    remaining = batch.total_count - done
    eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining else "-"
    waiting = batch.in_troubleshooting_count
    pace = (
        f"waiting for an operator: {waiting} in the troubleshooting queue"
        if waiting and remaining == waiting and not batch.is_final
        else f"{rate:.1f}/s  ETA {eta}"
    )
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{batch.total_count} "
        f"{100 * part // total}%  failed {batch.failed_count}  "
        f"canceled {batch.canceled_count}  in TSQ {waiting}  {pace}  {batch.status}"
        f"{'  open' if batch.is_open else ''}{'  canceled' if batch.is_canceled else ''}"
    )


async def batch_watch(args: argparse.Namespace, runtime: Runtime) -> None:
    """Show progress until the batch completes (a line per update when not on a terminal)."""
    try:
        check_seconds("--interval", args.interval)
    except ValidationError as ex:
        raise UsageError(str(ex)) from None
    batch = await _existing_batch(args, runtime)
    started, first_done = trio.current_time(), _done(batch)
    live = sys.stdout.isatty() and not args.json
    shown = 0  # the length of the line on the terminal, to be overwritten whole
    while True:
        elapsed = trio.current_time() - started
        rate = (_done(batch) - first_done) / elapsed if elapsed > 0 else 0.0
        if not args.json:
            line = progress_line(batch, rate)
            if live:
                print(f"\r{line.ljust(shown)}", end="", flush=True)
                shown = len(line)
            else:
                print(line, flush=True)
        if batch.is_final:
            break
        await trio.sleep(args.interval)
        batch = await _existing_batch(args, runtime)
    if live:
        print()
    if args.json:
        _emit(args, batch)


def _done(batch: BatchMetadata) -> int:
    return batch.completed_count + batch.failed_count + batch.canceled_count


PRUNE_COLUMNS = ("domain", "commands", "batches", "audit_rows", "replies")


async def prune(args: argparse.Namespace, runtime: Runtime) -> None:
    """Remove (or with --dry-run count) finished work older than --older-than."""
    policy = RetentionPolicy(commands=args.older_than, replies=args.older_than)
    domain = None if args.domain is None else check_name("domain", args.domain)
    report = await Pruner(runtime.pool, policy).prune(
        domain=domain, dry_run=args.dry_run, wait=True
    )
    rows = [{"domain": name, **attrs.asdict(r)} for name, r in report.removed.items()]
    if report.replies or domain is None:
        rows.append({"domain": "(replies)", **attrs.asdict(Removed(replies=report.replies))})
    if args.json:
        _emit(args, {"dry_run": args.dry_run, "removed": rows})
        return
    print("would remove (dry run):" if args.dry_run else "removed:")
    _emit(args, rows, PRUNE_COLUMNS)


SCHEDULE_COLUMNS = (
    "name",
    "domain",
    "command_type",
    "cron",
    "timezone",
    "last_tick",
    "next_tick",
    "version",
)


async def schedule_list(args: argparse.Namespace, runtime: Runtime) -> None:
    """The schedules declared on this database, with their last tick sent and the next."""
    async with runtime.pool.connection() as conn:
        records = await select_schedules(conn)
    now = datetime.now(UTC)
    rows = [
        {**attrs.asdict(record, recurse=False), "next_tick": record.next_tick(now)}
        for record in records
    ]
    _emit(args, rows, SCHEDULE_COLUMNS)


async def replies_read(args: argparse.Namespace, runtime: Runtime) -> None:
    replies = await runtime.bus.read_replies(args.queue, limit=args.limit)
    _emit(args, replies, ("reply_id", "command_id", "outcome", "data", "created_at"))


async def run_migrate(args: argparse.Namespace, dsn: str) -> None:
    applied = await migrate(dsn)
    version = len(available_migrations())
    if args.json:
        _emit(args, {"applied": applied, "version": version})
    elif applied:
        print(f"schema at version {version} (applied {', '.join(map(str, applied))})")
    else:
        print(f"schema already at version {version}")


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def options(default: Any) -> argparse.ArgumentParser:
        # Leaves take the same options with SUPPRESS defaults, so `triobus --json tsq list`
        # and `triobus tsq list --json` both work (a leaf default would overwrite the top's).
        common = Parser(add_help=False)
        common.add_argument("--dsn", default=default, help=f"PostgreSQL DSN (default: ${DSN_ENV})")
        common.add_argument(
            "--json",
            action="store_true",
            default=default or False,
            help="print JSON instead of tables",
        )
        return common

    common = options(argparse.SUPPRESS)
    parser = Parser(prog="triobus", description=__doc__.split("\n")[0], parents=[options(None)])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(group: Any, name: str, help_text: str, action: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, parents=[common], description=help_text
        )
        sub.set_defaults(action=action)
        return sub

    leaf(commands, "migrate", "apply pending schema migrations", run_migrate)
    worker = leaf(commands, "worker", "run workers until SIGINT/SIGTERM", run_worker)
    add_worker_arguments(worker)
    web = leaf(commands, "web", "serve the operator's web console until SIGINT/SIGTERM", run_web)
    add_web_arguments(web)

    tsq = commands.add_parser("tsq", help="troubleshooting queue").add_subparsers(
        dest="tsq_command", required=True, metavar="ACTION"
    )
    for name, help_text, action in (
        ("list", "list commands waiting in the TSQ", tsq_list),
        ("count", "count commands waiting in the TSQ", tsq_count),
    ):
        sub = leaf(tsq, name, help_text, action)
        sub.add_argument("domain")
        sub.add_argument("--type", help="only this command type")
        if name == "list":
            sub.add_argument("--limit", type=int, default=50)
            sub.add_argument("--offset", type=int, default=0)
    for name, help_text, action in (
        ("retry", "send a TSQ command back to the queue", tsq_retry),
        ("cancel", "cancel a TSQ command", tsq_cancel),
        ("complete", "complete a TSQ command by hand", tsq_complete),
    ):
        sub = leaf(tsq, name, help_text, action)
        sub.add_argument("domain")
        sub.add_argument("command_id")
        sub.add_argument(
            "--operator", help="who acts, recorded in the audit trail (default: login name)"
        )
        if name == "retry":
            sub.add_argument("--data", help="corrected command data, a JSON object")
        if name == "cancel":
            sub.add_argument("--reason", required=True)
        if name == "complete":
            sub.add_argument("--result", help="result data as a JSON object")
    for name, help_text, action in (
        ("retry-all", "retry every TSQ command of a domain", tsq_retry_all),
        ("cancel-all", "cancel every TSQ command of a domain", tsq_cancel_all),
    ):
        sub = leaf(tsq, name, help_text, action)
        sub.add_argument("domain")
        sub.add_argument("--type", help="only this command type")
        sub.add_argument(
            "--operator", help="who acts, recorded in the audit trail (default: login name)"
        )
        if name == "cancel-all":
            sub.add_argument("--reason", required=True)

    command = commands.add_parser("command", help="inspect commands").add_subparsers(
        dest="command_command", required=True, metavar="ACTION"
    )
    show = leaf(command, "show", "a command and its audit trail", command_show)
    show.add_argument("domain")
    show.add_argument("command_id")
    listing = leaf(command, "list", "commands, newest first", command_list)
    listing.add_argument("--domain", help="only this domain")
    listing.add_argument("--status", help="only this status")
    listing.add_argument("--type", help="only this command type")
    listing.add_argument("--correlation-id", help="only this correlation id")
    listing.add_argument("--batch-id", help="only the commands of this batch")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--offset", type=int, default=0)

    pruning = leaf(
        commands,
        "prune",
        "remove finished commands, completed batches and old replies (what retention does)",
        prune,
    )
    pruning.add_argument("--domain", help="only this domain (and not the replies)")
    pruning.add_argument(
        "--older-than",
        type=duration,
        default=7 * 86_400.0,
        metavar="AGE",
        help="finished (completed, created) before this long ago: 90, 45s, 30m, 12h, 7d"
        " (default: 7d)",
    )
    pruning.add_argument("--dry-run", action="store_true", help="count, remove nothing")

    counts = leaf(
        commands, "stats", "commands per domain and status, oldest pending wait, TSQ", stats
    )
    counts.add_argument("domain", nargs="?", help="only this domain")

    batch = commands.add_parser("batch", help="batches").add_subparsers(
        dest="batch_command", required=True, metavar="ACTION"
    )
    listing = leaf(batch, "list", "batches of a domain, newest first", batch_list)
    listing.add_argument("domain")
    listing.add_argument("--status", help="only batches in this status")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    for name, help_text, action in (
        ("show", "a batch, its counts, follow-up commands and audit events", batch_show),
        ("watch", "a live progress bar until the batch completes", batch_watch),
        ("cancel", "cancel a batch: its waiting and TSQ members are canceled", batch_cancel),
        ("retry", "retry every member of a batch that is in the TSQ", batch_retry),
        ("close", "close an open batch: it completes once no member is open", batch_close),
    ):
        sub = leaf(batch, name, help_text, action)
        sub.add_argument("domain")
        sub.add_argument("batch_id")
        if name == "watch":
            sub.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
        if name in ("cancel", "retry"):
            sub.add_argument(
                "--operator", help="who acts, recorded in the audit trail (default: login name)"
            )
        if name == "cancel":
            sub.add_argument("--reason", required=True)

    schedule = commands.add_parser("schedule", help="periodic commands").add_subparsers(
        dest="schedule_command", required=True, metavar="ACTION"
    )
    leaf(schedule, "list", "schedules, their last tick sent and the next", schedule_list)

    replies = commands.add_parser("replies", help="reply queues").add_subparsers(
        dest="replies_command", required=True, metavar="ACTION"
    )
    read = leaf(replies, "read", "unacknowledged replies of a queue", replies_read)
    read.add_argument("queue")
    read.add_argument("--limit", type=int, default=100)
    return parser


async def _dispatch(args: argparse.Namespace, dsn: str) -> int:
    """Run the command; its exit status."""
    if args.action in (run_worker, run_web):
        status: int = await args.action(args, dsn)
        return status
    if args.action is run_migrate:
        await run_migrate(args, dsn)
        return 0
    async with open_runtime(dsn, migrate=False, retention=None) as runtime:
        await args.action(args, runtime)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dsn = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        print(f"triobus: error: no database: pass --dsn or set {DSN_ENV}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_dsn(dsn)  # its messages never quote the DSN, which may hold a password
        return int(trio.run(_dispatch, args, dsn))
    except UsageError as ex:
        print(f"triobus: error: {one_line(ex)}", file=sys.stderr)
        return EXIT_USAGE
    except ApplicationError as ex:
        traceback.print_exception(ex.error, file=sys.stderr)
        print(f"triobus: error: {ex}", file=sys.stderr)
        return EXIT_ERROR
    except TriobusError as ex:
        print(f"triobus: error: {one_line(ex)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C outside the worker's own handling (starting up)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

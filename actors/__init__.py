"""triobus: a durable command bus on Trio, with PostgreSQL as its only store.

Everything an application needs is importable from here::

    from triobus.actors import HandlerRegistry, open_runtime

    registry = HandlerRegistry()

    @registry.handler("payments", "Debit")
    async def debit(command, ctx):
        return {"debited": command.data["amount"]}

    async with open_runtime(registry=registry) as runtime:
        await runtime.start_worker("payments")
        await runtime.bus.send("payments", "Debit", command_id, {"amount": 10})
"""

# First: trio-asyncio's patch of asyncio, and psycopg's waits pointed at it whenever
# psycopg was imported (see the module).
import triobus.actors.asyncio_patches  # noqa: F401
from triobus.actors.bus import CommandBus
from triobus.actors.events import (
    BatchCallbackFailed,
    BatchCompleted,
    CommandClaimed,
    CommandFinished,
    CommandMovedToTroubleshooting,
    CommandRetried,
    CommandSent,
    DatabaseRecovered,
    DatabaseUnavailable,
    Event,
    Events,
    LeaseExpired,
    OperatorActed,
)
from triobus.actors.handler_context import HandlerContext
from triobus.actors.handlers import (
    BusinessRuleError,
    CommandHandlerError,
    HandlerAlreadyRegisteredError,
    HandlerRegistry,
    PermanentCommandError,
    TransientCommandError,
    handler,
)
from triobus.actors.maintenance import RetentionPolicy
from triobus.actors.outcomes import RetryPolicy
from triobus.actors.runtime import Runtime, RuntimeOptions, RuntimeStatistics, open_runtime
from triobus.actors.transaction import Transaction
from triobus.actors.troubleshooting import TroubleshootingQueue
from triobus.actors.worker import Worker, WorkerOptions, WorkerStatistics
from triobus.persistence.driver import DriverKind
from triobus.persistence.errors import (
    BatchNotFoundError,
    CommandNotFoundError,
    DatabaseError,
    DatabaseUnavailableError,
    DuplicateBatchError,
    DuplicateCommandError,
    InvalidOperationError,
    TriobusError,
    ValidationError,
)
from triobus.persistence.new_commands import new_command_id
from triobus.persistence.records import (
    AuditEvent,
    AuditEventType,
    BatchCommand,
    BatchFollowUp,
    BatchMetadata,
    BatchStatus,
    Command,
    CommandError,
    CommandMetadata,
    CommandStatus,
    DomainStatistics,
    FollowUpCommand,
    FollowUpEvent,
    Reply,
    ReplyOutcome,
    SendResult,
    TroubleshootingItem,
)
from triobus.persistence.schedules import ScheduleRecord

__all__ = [
    "AuditEvent",
    "AuditEventType",
    "BatchCallbackFailed",
    "BatchCommand",
    "BatchCompleted",
    "BatchFollowUp",
    "BatchMetadata",
    "BatchNotFoundError",
    "BatchStatus",
    "BusinessRuleError",
    "Command",
    "CommandBus",
    "CommandClaimed",
    "CommandError",
    "CommandFinished",
    "CommandHandlerError",
    "CommandMetadata",
    "CommandMovedToTroubleshooting",
    "CommandNotFoundError",
    "CommandRetried",
    "CommandSent",
    "CommandStatus",
    "DatabaseError",
    "DatabaseRecovered",
    "DatabaseUnavailable",
    "DatabaseUnavailableError",
    "DomainStatistics",
    "DriverKind",
    "DuplicateBatchError",
    "DuplicateCommandError",
    "Event",
    "Events",
    "FollowUpCommand",
    "FollowUpEvent",
    "HandlerAlreadyRegisteredError",
    "HandlerContext",
    "HandlerRegistry",
    "InvalidOperationError",
    "LeaseExpired",
    "OperatorActed",
    "PermanentCommandError",
    "Reply",
    "ReplyOutcome",
    "RetentionPolicy",
    "RetryPolicy",
    "Runtime",
    "RuntimeOptions",
    "RuntimeStatistics",
    "ScheduleRecord",
    "SendResult",
    "Transaction",
    "TransientCommandError",
    "TriobusError",
    "TroubleshootingItem",
    "TroubleshootingQueue",
    "ValidationError",
    "Worker",
    "WorkerOptions",
    "WorkerStatistics",
    "handler",
    "new_command_id",
    "open_runtime",
]

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

# trio-asyncio patches asyncio when imported; code that binds asyncio functions at
# import time (psycopg's asyncio waits, for one) must see the patched versions, so
# import it before anything else for asyncio handlers that use such libraries.
import trio_asyncio  # noqa: F401

from triobus.actors.bus import CommandBus
from triobus.actors.handlers import Command, HandlerContext, HandlerRegistry, handler
from triobus.actors.runtime import Runtime, RuntimeStatistics, open_runtime
from triobus.actors.troubleshooting import TroubleshootingQueue
from triobus.actors.worker import RetryPolicy, Worker, WorkerStatistics
from triobus.persistence.batches import BatchMetadata, BatchStatus
from triobus.persistence.driver import DriverKind
from triobus.persistence.errors import (
    BatchNotFoundError,
    BusinessRuleError,
    CommandHandlerError,
    CommandNotFoundError,
    DatabaseError,
    DatabaseUnavailableError,
    DuplicateBatchError,
    DuplicateCommandError,
    HandlerAlreadyRegisteredError,
    InvalidOperationError,
    PermanentCommandError,
    TransientCommandError,
    TriobusError,
    ValidationError,
)
from triobus.persistence.records import (
    AuditEvent,
    AuditEventType,
    BatchCommand,
    CommandError,
    CommandMetadata,
    CommandStatus,
    Reply,
    ReplyOutcome,
    SendResult,
)
from triobus.persistence.troubleshooting import TroubleshootingItem

__all__ = [
    "AuditEvent",
    "AuditEventType",
    "BatchCommand",
    "BatchMetadata",
    "BatchNotFoundError",
    "BatchStatus",
    "BusinessRuleError",
    "Command",
    "CommandBus",
    "CommandError",
    "CommandHandlerError",
    "CommandMetadata",
    "CommandNotFoundError",
    "CommandStatus",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DriverKind",
    "DuplicateBatchError",
    "DuplicateCommandError",
    "HandlerAlreadyRegisteredError",
    "HandlerContext",
    "HandlerRegistry",
    "InvalidOperationError",
    "PermanentCommandError",
    "Reply",
    "ReplyOutcome",
    "RetryPolicy",
    "Runtime",
    "RuntimeStatistics",
    "SendResult",
    "TransientCommandError",
    "TriobusError",
    "TroubleshootingItem",
    "TroubleshootingQueue",
    "ValidationError",
    "Worker",
    "WorkerStatistics",
    "handler",
    "open_runtime",
]

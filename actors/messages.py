"""Messages between actors: small frozen records sent over bounded memory channels."""

from __future__ import annotations

from uuid import UUID

import attrs


@attrs.frozen
class CommandsFinished:
    """Commands of a batch reached terminal states in this process (a count delta)."""

    domain: str
    batch_id: UUID
    completed: int
    failed: int
    canceled: int


@attrs.frozen
class BatchFinished:
    """A hint that the batch may be complete: from a local ack or operator action, the
    notifier (another process completed it), or the reconciliation poll."""

    domain: str
    batch_id: UUID


BatchMessage = CommandsFinished | BatchFinished

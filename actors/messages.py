"""Messages between actors: small frozen records sent over bounded memory channels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import UUID

import attrs

from triobus.persistence.queue import HandlerResult
from triobus.persistence.records import BatchCounts, CommandChange

# How the acker and the operator's actions hand committed changes to the batch supervisor.
OnChanges = Callable[[Sequence[CommandChange]], None]


@attrs.frozen
class WrittenResult:
    """A result a transactional handler's own transaction has written and committed
    (`changes`), or rolled back because the claim's lease was lost (no changes: the
    result is discarded). The acker only settles, counts and reports it."""

    result: HandlerResult
    changes: tuple[CommandChange, ...]


# What the handler pool sends the acker: a result to write, or one already written.
AckMessage = HandlerResult | WrittenResult


@attrs.frozen
class BatchProgress:
    """A batch's counts as of a commit in this process. Absolute, not deltas: terminal
    counts never decrease, so the highest seen is the latest whatever the order of
    arrival, and a count already read from the database is never added twice. The
    troubleshooting count goes up and down: the latest message is taken."""

    domain: str
    batch_id: UUID
    counts: BatchCounts


@attrs.frozen
class BatchFinished:
    """A hint that the batch may be complete: from a local ack or operator action, the
    notifier (another process completed it), or the reconciliation poll."""

    domain: str
    batch_id: UUID


BatchMessage = BatchProgress | BatchFinished

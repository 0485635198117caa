"""The commands one worker holds, from their claim until the acker has written their result.

A claimed command is first *waiting* (prefetched, not yet taken by a handler), then
*running*, then *finished* (its result on its way to the acker), and leaves once the acker
has written (or discarded) the result, or when stopping releases it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from uuid import UUID

import trio

from triobus.persistence.queue import ClaimedCommand, HandlerResult

# Finished commands waiting for the acker, beyond the running ones: room for at least
# this many, so a small worker keeps claiming while the acker writes a batch (16
# handlers: +25 % commands/s over twice the concurrency).
MIN_ACK_ROOM = 48


class InFlight:
    """What one worker holds (see the module docstring), and how much more it may claim.

    Invariants, with N handlers and P prefetch:

    * waiting + running <= N + P: a handler slot frees when its handler returns, before
      the acker writes the result, so claims overlap the acker's writes;
    * every held command (waiting, running or finished) <= N + P + max(N, MIN_ACK_ROOM)
      (`bound`): results the acker cannot write yet stop further claims.

    `held()` is the current claim of each command, by command id: a late result of an
    older claim of the same command settles nothing, so the newer claim stays held.
    `changed()` returns after room may have been made (coalescing: one wake-up may stand
    for several changes).
    """

    def __init__(self, concurrency: int, prefetch: int) -> None:
        self.slots = concurrency + prefetch
        self.bound = self.slots + max(concurrency, MIN_ACK_ROOM)
        self.waiting = 0
        self.running = 0
        self._claims: dict[UUID, ClaimedCommand] = {}
        self._changed_send, self._changed_receive = trio.open_memory_channel[None](1)

    def __len__(self) -> int:
        return len(self._claims)

    def room(self) -> int:
        """How many commands may be claimed now, within both bounds."""
        return min(self.slots - self.waiting - self.running, self.bound - len(self._claims))

    def held(self) -> list[ClaimedCommand]:
        return list(self._claims.values())

    def hold(self, claims: Sequence[ClaimedCommand]) -> None:
        """These commands were claimed: they wait for a handler."""
        for claim in claims:
            self._claims[claim.command.command_id] = claim
        self.waiting += len(claims)

    def started(self) -> None:
        """A handler took a waiting command."""
        self.waiting -= 1
        self.running += 1

    def finished(self) -> None:
        """A handler finished its command; the result goes to the acker."""
        self.running -= 1
        self._wake()

    def settled(self, results: Sequence[HandlerResult]) -> None:
        """The acker has written these results (or found their leases lost)."""
        for result in results:
            claim = self._claims.get(result.command_id)
            if claim is not None and claim.lease_token == result.lease_token:
                del self._claims[result.command_id]  # not a newer claim of the same command
        self._wake()

    def forget_all(self) -> None:
        """Every held command was released (or left to its lease expiring)."""
        self._claims.clear()

    async def changed(self) -> None:
        await self._changed_receive.receive()

    def _wake(self) -> None:
        with suppress(trio.WouldBlock):  # a wake-up is already waiting: coalesce
            self._changed_send.send_nowait(None)

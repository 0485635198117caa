"""A hypothesis state machine over the store: random sends, batches, claims, handler
outcomes, lease expiries, late results and operator actions in two domains, checked
against a model and the ARCHITECTURE §4 invariants in the real database after every step.

The steps drive the persistence layer (`claim_commands`, `ack_if_claimed`, ...) and the
runtime's `bus` and `tsq` directly, not a running worker, so every step is deterministic.
The runtime runs in `trio.run` on a thread for the whole test (the state machine is
synchronous and calls into it through a trio token); the invariants are read with a
plain synchronous psycopg connection. Between examples the tables are emptied.

Batches may be open (commands added over time, then closed), canceled, and have their
TSQ members retried; each carries the three follow-up commands, sent to domain "f".

Invariants after every step: each command's status, attempts and lease token are the
model's; a terminal command's row never changes again; its audit trail is exactly the
model's (one terminal event at most, and last); one reply per terminal command with
reply_to, none otherwise; batch counts equal a recount and add up to the total; a batch
is final exactly when it is closed and all its commands are terminal, with one
BATCH_COMPLETED carrying the final counts, one BATCH_STARTED once claimed, and its
BATCH_CLOSED and BATCH_CANCELED events in the order they happened; after a cancel no
member waits for a retry; each follow-up command exists once if its event happened, and
never otherwise (invariant 7).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import attrs
import psycopg
import pytest
import trio
import trio.from_thread
import trio.lowlevel
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg.rows import DictRow, dict_row

from triobus.actors import (
    BatchCommand,
    BusinessRuleError,
    CommandNotFoundError,
    DuplicateCommandError,
    FollowUpCommand,
    FollowUpEvent,
    InvalidOperationError,
    PermanentCommandError,
    RetryPolicy,
    Runtime,
    TransientCommandError,
    ValidationError,
    open_runtime,
)
from triobus.actors.outcomes import Raised, Returned, outcome_of
from triobus.persistence.queue import (
    ClaimedCommand,
    HandlerResult,
    Outcome,
    ack_if_claimed,
    claim_commands,
    extend_leases_if_claimed,
    release_if_claimed,
)
from triobus.persistence.records import BatchCounts, CommandChange

T = TypeVar("T")
Key = tuple[str, uuid.UUID]  # (domain, id) of a command or batch

DOMAINS = ("d", "e")
QUEUE = "replies"
DEFAULT_MAX_ATTEMPTS = 2
POLICY = RetryPolicy(max_attempts=DEFAULT_MAX_ATTEMPTS, backoff=(0.0,))
MAX_OPEN = 8
LEASE_SECONDS = 3600.0  # leases end only when a step expires them

PENDING, IN_PROGRESS, TSQ = "PENDING", "IN_PROGRESS", "IN_TROUBLESHOOTING_QUEUE"
COMPLETED, FAILED, CANCELED = "COMPLETED", "FAILED", "CANCELED"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED})
TERMINAL_EVENTS = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "BUSINESS_RULE_FAILED",
        "OPERATOR_CANCEL",
        "OPERATOR_COMPLETE",
        "CANCELED_WITH_BATCH",
    }
)
FOLLOW_UP_DOMAIN = "f"  # no step claims its commands: only follow-ups are sent there
FOLLOW_UPS: dict[str, Any] = {
    event.argument: FollowUpCommand(domain=FOLLOW_UP_DOMAIN, command_type=str(event))
    for event in FollowUpEvent
}
REPLY_OUTCOME = {COMPLETED: "SUCCESS", FAILED: "FAILED", CANCELED: "CANCELED"}

HANDLER_BEHAVIOURS = (
    "success",
    "success",
    "transient",
    "crash",
    "permanent",
    "business",
    "invalid",
)
MAX_ATTEMPTS_CHOICES = st.sampled_from([None, 1, 2, 3])


class Portal:
    """An open runtime in `trio.run` on a thread; `call(fn)` awaits `fn(runtime)` there."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._runtime: Runtime | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=self._run, name="state-machine-runtime")

    def call(self, fn: Callable[[Runtime], Awaitable[T]]) -> T:
        assert self._runtime is not None and self._token is not None
        runtime = self._runtime

        async def call() -> T:
            return await fn(runtime)

        return trio.from_thread.run(call, trio_token=self._token)

    @contextmanager
    def open(self) -> Iterator[Portal]:
        self._thread.start()
        self._ready.wait()
        try:
            if self._error is not None:
                raise self._error
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as ex:  # reported by open()
            self._error = ex
            self._ready.set()

    async def _serve(self) -> None:
        async with open_runtime(self._dsn, migrate=False, pool_size=2) as runtime:
            self._runtime = runtime
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.to_thread.run_sync(self._stop.wait)


@attrs.define
class ModelCommand:
    """What the model expects of one command."""

    domain: str
    command_id: uuid.UUID
    reply_to: str | None
    max_attempts: int | None
    batch: Key | None
    status: str = PENDING
    attempts: int = 0
    lease: uuid.UUID | None = None  # the token of the claim that holds it
    expired: bool = False
    events: list[str] = attrs.Factory(lambda: ["SENT"])
    final_row: dict[str, Any] | None = None  # the row as it became terminal

    @property
    def key(self) -> Key:
        return self.domain, self.command_id

    @property
    def attempt_limit(self) -> int:
        return self.max_attempts or DEFAULT_MAX_ATTEMPTS

    @property
    def claimable(self) -> bool:
        return self.status == PENDING or (self.status == IN_PROGRESS and self.expired)

    @property
    def exhausted(self) -> bool:
        """Claiming it moves it to the TSQ (lease expired after its last attempt)."""
        return self.status == IN_PROGRESS and self.expired and self.attempts >= self.attempt_limit


@attrs.define
class ModelBatch:
    commands: list[Key]
    open: bool = False
    canceled: bool = False
    failed: bool = False  # a member failed, was canceled or entered the TSQ
    events: list[str] = attrs.Factory(list)  # BATCH_* events as they happened

    @property
    def started(self) -> bool:
        return "BATCH_STARTED" in self.events

    @property
    def completed(self) -> bool:
        return "BATCH_COMPLETED" in self.events


def key_of(claim: ClaimedCommand | HandlerResult | CommandChange) -> Key:
    if isinstance(claim, ClaimedCommand):
        return claim.command.domain, claim.command.command_id
    return claim.domain, claim.command_id


def expected_outcome(behaviour: str, claim: ClaimedCommand) -> Outcome:
    """ARCHITECTURE §7, written out independently of `outcome_of`."""
    if behaviour == "success":
        return Outcome.COMPLETED
    if behaviour == "business":
        return Outcome.BUSINESS_RULE_FAILED
    if behaviour in ("permanent", "invalid"):
        return Outcome.MOVED_TO_TSQ
    limit = claim.max_attempts or DEFAULT_MAX_ATTEMPTS
    return Outcome.RETRY_SCHEDULED if claim.attempt < limit else Outcome.RETRY_EXHAUSTED


def handler_result(behaviour: str, claim: ClaimedCommand) -> HandlerResult:
    """What the worker would acknowledge for a handler that behaved so."""
    match behaviour:
        case "success":
            return outcome_of(claim, Returned({"attempt": claim.attempt}), POLICY)
        case "invalid":  # NaN is not storable JSON: the result is refused
            return outcome_of(claim, Returned({"x": float("nan")}), POLICY)
        case "transient":
            error: Exception = TransientCommandError("FLAKY", "try again")
        case "crash":
            error = RuntimeError("handler bug")
        case "permanent":
            error = PermanentCommandError("BROKEN", "needs an operator", {"hint": "fix"})
        case _:
            error = BusinessRuleError("REFUSED", "not allowed")
    return outcome_of(claim, Raised(error), POLICY)


class StoreMachine(RuleBasedStateMachine):
    """The model: commands and batches of two domains with their expected state, and the
    claims that simulated handlers still hold (current ones, and stale ones whose results
    would be late)."""

    portal: ClassVar[Portal | None] = None
    db: ClassVar[psycopg.Connection[DictRow] | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.sql("TRUNCATE triobus.reply, triobus.audit, triobus.command, triobus.batch")
        self.commands: dict[Key, ModelCommand] = {}
        self.batches: dict[Key, ModelBatch] = {}
        self.held: list[ClaimedCommand] = []
        self.ids = 0

    # -- plumbing ------------------------------------------------------------------------

    def call(self, fn: Callable[[Runtime], Awaitable[T]]) -> T:
        assert self.portal is not None
        return self.portal.call(fn)

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[DictRow]:
        assert self.db is not None
        cursor = self.db.execute(query, params)
        return cursor.fetchall() if cursor.description is not None else []

    def new_id(self) -> uuid.UUID:
        self.ids += 1
        return uuid.UUID(int=self.ids)

    def in_status(self, *statuses: str) -> list[ModelCommand]:
        return [c for c in self.commands.values() if c.status in statuses]

    def is_current(self, claim: ClaimedCommand) -> bool:
        return self.commands[key_of(claim)].lease == claim.lease_token

    def draw_claims(
        self, data: st.DataObject, claims: list[ClaimedCommand], *, most: int = 1
    ) -> list[ClaimedCommand]:
        """Some of these claims, drawn by a readable label (what a failing example prints)."""
        labelled = {
            f"{c.command.domain}/{c.command.command_id.int} attempt {c.attempt}"
            f" lease {str(c.lease_token)[:8]}"
            f" ({'current' if self.is_current(c) else 'stale'})": c
            for c in claims
        }
        chosen = data.draw(
            st.lists(st.sampled_from(list(labelled)), min_size=1, max_size=most, unique=True),
            label="claims",
        )
        return [labelled[label] for label in chosen]

    def become(self, command: ModelCommand, status: str, event: str) -> None:
        assert command.status not in TERMINAL, "the model never moves a terminal command"
        command.status = status
        command.events.append(event)
        command.lease = None
        command.expired = False
        if command.batch is not None and status in (FAILED, CANCELED, TSQ):
            self.batches[command.batch].failed = True

    def note_completions(self) -> set[Key]:
        """Batches the last step completed (their BATCH_COMPLETED is now due)."""
        completed = {
            k for k, b in self.batches.items() if not b.completed and self.batch_is_final(k)
        }
        for key in completed:
            self.batches[key].events.append("BATCH_COMPLETED")
        return completed

    def canceled_member(self, command: ModelCommand) -> bool:
        return command.batch is not None and self.batches[command.batch].canceled

    # -- sends and batches ---------------------------------------------------------------

    def running_batches(self) -> list[Key]:
        """Batches not yet canceled with a member whose handler still runs."""
        running = {self.commands[key_of(c)].batch for c in self.held if self.is_current(c)}
        return [b for b in self.batches if b in running and not self.batches[b].canceled]

    def room_for_more(self) -> bool:
        """Sends stop while many commands are open, so that steps go to working them."""
        return sum(c.status not in TERMINAL for c in self.commands.values()) < MAX_OPEN

    @precondition(room_for_more)
    @rule(
        data=st.data(),
        domain=st.sampled_from(DOMAINS),
        reply=st.booleans(),
        max_attempts=MAX_ATTEMPTS_CHOICES,
        id_of_other_domain=st.booleans(),
    )
    def send(
        self,
        data: st.DataObject,
        domain: str,
        reply: bool,
        max_attempts: int | None,
        id_of_other_domain: bool,
    ) -> None:
        """A send; ids are unique per domain, so an id used in the other domain is new."""
        elsewhere = [
            i for d, i in self.commands if d != domain and (domain, i) not in self.commands
        ]
        if id_of_other_domain and elsewhere:
            command_id = data.draw(st.sampled_from(elsewhere), label="id of the other domain")
        else:
            command_id = self.new_id()
        command = ModelCommand(domain, command_id, QUEUE if reply else None, max_attempts, None)
        result = self.call(
            lambda rt: rt.bus.send(
                domain,
                "Work",
                command_id,
                {"n": command_id.int},
                reply_to=command.reply_to,
                max_attempts=max_attempts,
            )
        )
        assert (result.domain, result.command_id) == command.key
        self.commands[command.key] = command

    def new_members(
        self, batch: Key, specs: list[tuple[bool, int | None]]
    ) -> tuple[list[ModelCommand], list[BatchCommand]]:
        members = [
            ModelCommand(batch[0], self.new_id(), QUEUE if reply else None, max_attempts, batch)
            for reply, max_attempts in specs
        ]
        given = [
            BatchCommand(
                command_type="Work",
                command_id=m.command_id,
                data={"n": m.command_id.int},
                reply_to=m.reply_to,
                max_attempts=m.max_attempts,
            )
            for m in members
        ]
        return members, given

    @precondition(room_for_more)
    @rule(
        domain=st.sampled_from(DOMAINS),
        specs=st.lists(st.tuples(st.booleans(), MAX_ATTEMPTS_CHOICES), max_size=3),
        open_=st.booleans(),
    )
    def create_batch(self, domain: str, specs: list[tuple[bool, int | None]], open_: bool) -> None:
        """A batch with its follow-ups; an open one may start empty, a closed one not."""
        batch = (domain, self.new_id())
        members, given = self.new_members(batch, specs)

        async def create(rt: Runtime) -> uuid.UUID:
            return await rt.bus.create_batch(
                domain, given, batch_id=batch[1], open=open_, **FOLLOW_UPS
            )

        if not members and not open_:
            with pytest.raises(ValidationError, match="a batch needs at least one command"):
                self.call(create)
            return
        assert self.call(create) == batch[1]
        self.batches[batch] = ModelBatch([m.key for m in members], open=open_)
        self.commands.update((m.key, m) for m in members)

    @precondition(lambda self: self.batches and self.room_for_more())
    @rule(
        data=st.data(),
        specs=st.lists(st.tuples(st.booleans(), MAX_ATTEMPTS_CHOICES), min_size=1, max_size=2),
    )
    def add_to_batch(self, data: st.DataObject, specs: list[tuple[bool, int | None]]) -> None:
        """Commands added to an open batch; a closed one refuses them and keeps its count."""
        key = data.draw(st.sampled_from(list(self.batches)), label="batch")
        batch = self.batches[key]
        members, given = self.new_members(key, specs)

        async def add(rt: Runtime) -> None:
            await rt.bus.add_to_batch(key[0], key[1], given)

        if not batch.open:
            with pytest.raises(InvalidOperationError):
                self.call(add)
            return
        self.call(add)
        batch.commands += [m.key for m in members]
        self.commands.update((m.key, m) for m in members)
        event("commands added to an open batch")

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def close_batch(self, data: st.DataObject) -> None:
        """Closing an open batch completes it there if none of its members is open."""
        key = data.draw(st.sampled_from(list(self.batches)), label="batch")
        batch = self.batches[key]

        async def close(rt: Runtime) -> bool:
            return await rt.bus.close_batch(key[0], key[1])

        if not batch.open:
            with pytest.raises(InvalidOperationError):
                self.call(close)
            return
        completed = self.call(close)
        batch.open = False
        batch.events.append("BATCH_CLOSED")
        assert completed == (self.note_completions() == {key})
        if completed:
            event("batch completed by its close")

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def cancel_batch(self, data: st.DataObject) -> None:
        """A cancel ends every PENDING and TSQ member; a completed or canceled batch
        refuses it."""
        self.cancel(data.draw(st.sampled_from(list(self.batches)), label="batch"))

    @precondition(lambda self: bool(self.running_batches()))
    @rule(data=st.data())
    def cancel_batch_while_running(self, data: st.DataObject) -> None:
        """A cancel of a batch with a running member: its handler's retry (or move to the
        TSQ) is canceled instead, and its success stands."""
        self.cancel(data.draw(st.sampled_from(self.running_batches()), label="batch"))

    def cancel(self, key: Key) -> None:
        batch = self.batches[key]

        async def cancel(rt: Runtime) -> int:
            return await rt.bus.cancel_batch(key[0], key[1], reason="not wanted", operator="ops")

        if batch.completed or batch.canceled:
            with pytest.raises(InvalidOperationError):
                self.call(cancel)
            return
        waiting = [self.commands[k] for k in batch.commands]
        waiting = [c for c in waiting if c.status in (PENDING, TSQ)]
        assert self.call(cancel) == len(waiting)
        batch.open, batch.canceled = False, True
        batch.events.append("BATCH_CANCELED")
        for command in waiting:
            self.become(command, CANCELED, "CANCELED_WITH_BATCH")
        if self.note_completions():
            event("batch completed by its cancel")

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def retry_batch(self, data: st.DataObject) -> None:
        """Every TSQ member of the batch back to PENDING; a canceled batch refuses it."""
        key = data.draw(st.sampled_from(list(self.batches)), label="batch")
        batch = self.batches[key]

        async def retry(rt: Runtime) -> int:
            return await rt.tsq.retry_batch(key[0], key[1], operator="ops")

        if batch.canceled:
            with pytest.raises(InvalidOperationError):
                self.call(retry)
            return
        in_tsq = [c for k in batch.commands if (c := self.commands[k]).status == TSQ]
        assert self.call(retry) == len(in_tsq)
        for command in in_tsq:
            self.apply_operator(command, "retry")

    @precondition(lambda self: self.commands)
    @rule(data=st.data(), in_batch=st.booleans())
    def send_taken_id(self, data: st.DataObject, in_batch: bool) -> None:
        """Sends are idempotent by id, batches all or nothing: a send or a batch with an
        id already stored raises DuplicateCommandError and writes nothing."""
        domain, taken = data.draw(st.sampled_from(list(self.commands)), label="taken")
        if in_batch:
            batch_id, fresh = self.new_id(), self.new_id()
            batch = [
                BatchCommand(command_type="Work", command_id=fresh, data={}),
                BatchCommand(command_type="Work", command_id=taken, data={}),
            ]
            with pytest.raises(DuplicateCommandError):
                self.call(lambda rt: rt.bus.create_batch(domain, batch, batch_id=batch_id))
        else:
            with pytest.raises(DuplicateCommandError):
                self.call(lambda rt: rt.bus.send(domain, "Work", taken, {"again": True}))

    # -- claims and leases ---------------------------------------------------------------

    @precondition(lambda self: any(c.claimable for c in self.commands.values()))
    @rule(data=st.data(), domain=st.sampled_from(DOMAINS), limit=st.sampled_from([1, 2, 3, 100]))
    def claim(self, data: st.DataObject, domain: str, limit: int) -> None:
        """A claim in one domain; the handlers of some claimed commands finish at once (one
        ack statement, as the worker's acker writes them), the others keep running."""
        candidates = [c for c in self.commands.values() if c.domain == domain and c.claimable]

        async def claim(rt: Runtime) -> list[ClaimedCommand]:
            async with rt.pool.connection() as conn:
                return await claim_commands(
                    conn,
                    domain,
                    limit=limit,
                    visibility_timeout=LEASE_SECONDS,
                    default_max_attempts=DEFAULT_MAX_ATTEMPTS,
                )

        claims = self.call(claim)
        assert len({key_of(c) for c in claims}) == len(claims)
        # Which candidates the limit leaves out depends on visible_at order, so the model
        # learns it: the exhausted candidates that the claim moved to the TSQ.
        exhausted = [c for c in candidates if c.exhausted]
        moved = {
            row["command_id"]
            for row in self.sql(
                "SELECT command_id FROM triobus.command"
                " WHERE domain = %s AND command_id = ANY(%s) AND status = %s",
                (domain, [c.command_id for c in exhausted], TSQ),
            )
        }
        assert len(claims) + len(moved) == min(limit, len(candidates))
        for claim_ in claims:
            command = self.commands[key_of(claim_)]
            assert command.domain == domain and command.claimable and not command.exhausted
            assert claim_.attempt == command.attempts + 1
            assert (claim_.max_attempts, claim_.command.reply_to, claim_.command.batch_id) == (
                command.max_attempts,
                command.reply_to,
                None if command.batch is None else command.batch[1],
            )
            command.status = IN_PROGRESS
            command.attempts += 1
            command.lease = claim_.lease_token
            command.expired = False
            command.events.append("RECEIVED")
            if command.batch is not None and not self.batches[command.batch].started:
                self.batches[command.batch].events.append("BATCH_STARTED")
        for command in exhausted:
            if command.command_id in moved:
                event("claim moved an exhausted lease to the TSQ")
                self.become(command, TSQ, "RETRY_EXHAUSTED")
        finished = []
        for claim_ in claims:
            behaviour = data.draw(
                st.sampled_from(("keeps running", "keeps running", *HANDLER_BEHAVIOURS)),
                label=f"handler of {claim_.command.domain}/{claim_.command.command_id.int}",
            )
            if behaviour == "keeps running":
                self.held.append(claim_)
            else:
                finished.append((claim_, behaviour))
        if finished:
            self.finish(finished)

    @precondition(lambda self: any(not c.expired for c in self.in_status(IN_PROGRESS)))
    @rule(data=st.data())
    def expire_leases(self, data: st.DataObject) -> None:
        """Leases run out (a worker hangs or dies): the commands are claimable again and
        their handlers, if they ever finish, answer late."""
        leased = [c.key for c in self.in_status(IN_PROGRESS) if not c.expired]
        expiring = data.draw(
            st.lists(st.sampled_from(leased), min_size=1, unique=True), label="leases of"
        )
        self.sql(
            "UPDATE triobus.command SET visible_at = now() - interval '1 second'"
            " WHERE (domain, command_id) IN (SELECT * FROM unnest(%s::text[], %s::uuid[]))",
            ([d for d, _ in expiring], [i for _, i in expiring]),
        )
        for key in expiring:
            self.commands[key].expired = True

    @precondition(lambda self: self.held)
    @rule(data=st.data(), release=st.booleans())
    def heartbeat_or_release(self, data: st.DataObject, release: bool) -> None:
        """The heartbeat extends a claim's lease, or a clean stop releases the claim
        unfinished (its handler may still answer late afterwards: that changes nothing).
        Both act only while the claim's lease token is the command's."""
        (claim_,) = self.draw_claims(data, self.held)
        command = self.commands[key_of(claim_)]
        current = self.is_current(claim_)

        async def act(rt: Runtime) -> int:
            async with rt.pool.connection() as conn:
                if release:
                    return await release_if_claimed(conn, claim_.command.domain, [claim_])
                return await extend_leases_if_claimed(
                    conn, claim_.command.domain, [claim_], LEASE_SECONDS
                )

        assert self.call(act) == int(current)
        if current and release:  # visible again at once, the attempt not counted
            command.attempts -= 1
            if self.canceled_member(command):  # ... unless its batch was canceled
                self.become(command, CANCELED, "CANCELED_WITH_BATCH")
                self.note_completions()
            else:
                command.status = PENDING
                command.lease = None
        command.expired = command.expired and not current

    # -- handler results -----------------------------------------------------------------

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def handle(self, data: st.DataObject) -> None:
        """Held handlers finish: one result, or several acknowledged in one statement
        (current claims and late results from expired or released leases, mixed)."""
        claims = self.draw_claims(data, self.held, most=4)
        finished = [
            (
                c,
                data.draw(
                    st.sampled_from(HANDLER_BEHAVIOURS),
                    label=f"handler of {c.command.domain}/{c.command.command_id.int}",
                ),
            )
            for c in claims
        ]
        self.held = [c for c in self.held if c not in claims]
        self.finish(finished)

    def stale(self) -> list[ClaimedCommand]:
        """Held claims whose lease was lost (expired and re-claimed, released, moved)."""
        return [c for c in self.held if not self.is_current(c)]

    @precondition(lambda self: self.stale())
    @rule(data=st.data())
    def late_result(self, data: st.DataObject) -> None:
        """A handler whose lease was lost finishes after all: its result changes nothing."""
        (claim_,) = self.draw_claims(data, self.stale())
        behaviour = data.draw(st.sampled_from(HANDLER_BEHAVIOURS), label="handler")
        self.held.remove(claim_)
        self.finish([(claim_, behaviour)])

    def finish(self, finished: list[tuple[ClaimedCommand, str]]) -> None:
        """Acknowledge what these handlers did in one statement; check what it changed."""
        results = []
        for claim_, behaviour in finished:
            result = handler_result(behaviour, claim_)
            assert result.outcome is expected_outcome(behaviour, claim_), (behaviour, claim_)
            results.append(result)

        async def ack(rt: Runtime) -> list[CommandChange]:
            async with rt.pool.connection() as conn:
                return await ack_if_claimed(conn, results)

        changes = self.call(ack)
        applied: dict[Key, str] = {}
        counted_batches: set[Key] = set()
        for result in results:
            command = self.commands[key_of(result)]
            if command.lease != result.lease_token:
                event(f"late result discarded ({command.status})")
                continue
            status: str = result.outcome.status
            outcome_event: str = result.outcome.event
            if status in (PENDING, TSQ) and self.canceled_member(command):
                event("a member of a canceled batch is canceled instead of waiting")
                status, outcome_event = CANCELED, "CANCELED_WITH_BATCH"
            self.become(command, status, outcome_event)
            applied[command.key] = command.status
            if command.batch is not None and command.status != PENDING:
                counted_batches.add(command.batch)
        assert {key_of(c): c.status for c in changes} == applied
        assert len(changes) == len(applied)
        newly_final = self.note_completions()
        for _ in newly_final:
            event("batch completed by a handler result")
        for change in changes:
            batch = None if change.batch_id is None else (change.domain, change.batch_id)
            assert change.batch_completed == (batch in newly_final), change
            if batch in counted_batches:
                assert change.batch_counts == self.batch_counts(batch), change
            else:
                assert change.batch_counts is None, change

    # -- operator actions ----------------------------------------------------------------

    @precondition(lambda self: self.commands)
    @rule(
        data=st.data(),
        action=st.sampled_from(["retry", "cancel", "complete"]),
        on=st.sampled_from(["tsq", "tsq", "any", "unknown"]),
        domain=st.sampled_from(DOMAINS),
    )
    def operator(self, data: st.DataObject, action: str, on: str, domain: str) -> None:
        """An operator acts on one command: one in the TSQ, or any id in either domain
        (not in the TSQ: InvalidOperationError; not in this domain: CommandNotFoundError),
        or an unknown id."""
        in_tsq = [c.key for c in self.in_status(TSQ)]
        if on == "tsq" and in_tsq:
            domain, command_id = data.draw(st.sampled_from(in_tsq), label="command")
        elif on != "unknown":
            command_id = data.draw(st.sampled_from([i for _, i in self.commands]), label="id")
        else:
            command_id = self.new_id()
        command = self.commands.get((domain, command_id))

        async def act(rt: Runtime) -> None:
            if action == "retry":
                await rt.tsq.operator_retry(domain, command_id, operator="ops")
            elif action == "cancel":
                await rt.tsq.operator_cancel(domain, command_id, "not needed", operator="ops")
            else:
                await rt.tsq.operator_complete(
                    domain, command_id, result_data={"by": "hand"}, operator="ops"
                )

        if command is None:
            with pytest.raises(CommandNotFoundError):
                self.call(act)
        elif command.status != TSQ:
            with pytest.raises(InvalidOperationError):
                self.call(act)
        else:
            self.call(act)
            self.apply_operator(command, action)
            event(f"operator {action} applied")

    @precondition(lambda self: self.in_status(TSQ))
    @rule(action=st.sampled_from(["retry", "cancel"]), domain=st.sampled_from(DOMAINS))
    def operator_bulk(self, action: str, domain: str) -> None:
        """retry_all / cancel_all of one domain: every TSQ command there, no other."""
        in_tsq = [c for c in self.in_status(TSQ) if c.domain == domain]

        async def act(rt: Runtime) -> int:
            if action == "retry":
                return await rt.tsq.retry_all(domain, operator="ops")
            return await rt.tsq.cancel_all(domain, "not needed", operator="ops")

        assert self.call(act) == len(in_tsq)
        for command in in_tsq:
            self.apply_operator(command, action)

    def apply_operator(self, command: ModelCommand, action: str) -> None:
        if action == "retry":
            self.become(command, PENDING, "OPERATOR_RETRY")
            command.attempts = 0
        elif action == "cancel":
            self.become(command, CANCELED, "OPERATOR_CANCEL")
        else:
            self.become(command, COMPLETED, "OPERATOR_COMPLETE")
        self.note_completions()

    # -- model queries -------------------------------------------------------------------

    def batch_is_final(self, batch: Key) -> bool:
        return not self.batches[batch].open and all(
            self.commands[k].status in TERMINAL for k in self.batches[batch].commands
        )

    def batch_counts(self, batch: Key) -> BatchCounts:
        """The counts as the model expects them."""
        counted = Counter(self.commands[k].status for k in self.batches[batch].commands)
        return BatchCounts(counted[COMPLETED], counted[FAILED], counted[CANCELED], counted[TSQ])

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def commands_match_the_model(self) -> None:
        rows = {
            (r["domain"], r["command_id"]): r
            for r in self.sql(
                "SELECT * FROM triobus.command WHERE domain <> %s", (FOLLOW_UP_DOMAIN,)
            )
        }
        assert set(rows) == set(self.commands)
        for key, command in self.commands.items():
            row = rows[key]
            assert (row["status"], row["attempts"], row["lease_token"]) == (
                command.status,
                command.attempts,
                command.lease,
            ), (command, row)
            if command.status in TERMINAL:
                # a terminal command never changes again
                if command.final_row is None:
                    command.final_row = dict(row)
                assert dict(row) == command.final_row

    @invariant()
    def audit_trails_match_the_model(self) -> None:
        """At most one terminal event per command, none after it, and exactly the events
        the model expects, in order (a late result writes nothing)."""
        trails: dict[Key, list[str]] = {}
        for row in self.sql(
            "SELECT domain, subject_id, event_type FROM triobus.audit"
            " WHERE event_type NOT LIKE 'BATCH%%' AND domain <> %s ORDER BY audit_id",
            (FOLLOW_UP_DOMAIN,),
        ):
            trails.setdefault((row["domain"], row["subject_id"]), []).append(row["event_type"])
        assert set(trails) == set(self.commands)
        for key, command in self.commands.items():
            trail = trails[key]
            terminal_events = [e for e in trail if e in TERMINAL_EVENTS]
            assert len(terminal_events) == (1 if command.status in TERMINAL else 0), trail
            if terminal_events:
                assert trail[-1] in TERMINAL_EVENTS, trail
            assert trail == command.events

    @invariant()
    def one_reply_per_terminal_command_with_reply_to(self) -> None:
        replies: dict[Key, list[DictRow]] = {}
        for row in self.sql(
            "SELECT r.*, c.correlation_id AS command_correlation_id FROM triobus.reply r"
            " JOIN triobus.command c USING (domain, command_id)"
        ):
            replies.setdefault((row["domain"], row["command_id"]), []).append(row)
        for key, command in self.commands.items():
            found = replies.pop(key, [])
            if command.status in TERMINAL and command.reply_to is not None:
                assert len(found) == 1, (command, found)
                (reply,) = found
                assert reply["queue"] == command.reply_to
                assert reply["outcome"] == REPLY_OUTCOME[command.status]
                assert reply["correlation_id"] == reply["command_correlation_id"]
            else:
                assert found == [], (command, found)
        assert replies == {}

    @invariant()
    def batch_counts_and_completion(self) -> None:
        rows = {(r["domain"], r["batch_id"]): r for r in self.sql("SELECT * FROM triobus.batch")}
        assert set(rows) == set(self.batches)
        recount: dict[Key, Counter[str]] = {b: Counter() for b in self.batches}
        for row in self.sql(
            "SELECT domain, batch_id, status, count(*) AS n FROM triobus.command"
            " WHERE batch_id IS NOT NULL GROUP BY domain, batch_id, status"
        ):
            # every batch_id names a stored batch (no foreign key says so: migration 002)
            assert (row["domain"], row["batch_id"]) in recount, row
            recount[row["domain"], row["batch_id"]][row["status"]] = row["n"]
        events: dict[Key, list[DictRow]] = {b: [] for b in self.batches}
        for row in self.sql(
            "SELECT domain, subject_id, event_type, details FROM triobus.audit"
            " WHERE event_type LIKE 'BATCH%%' ORDER BY audit_id"
        ):
            events[row["domain"], row["subject_id"]].append(row)

        for key, batch in self.batches.items():
            row, counted = rows[key], recount[key]
            stored = (
                row["completed_count"],
                row["failed_count"],
                row["canceled_count"],
                row["in_troubleshooting_count"],
            )
            # invariant 2: counts are exact, and add up to the total with the open ones
            assert stored == (counted[COMPLETED], counted[FAILED], counted[CANCELED], counted[TSQ])
            assert BatchCounts(*stored) == self.batch_counts(key)
            assert row["total_count"] == len(batch.commands) == sum(counted.values())
            assert row["total_count"] == counted[PENDING] + counted[IN_PROGRESS] + sum(stored)
            # invariant 3: final exactly when every command is terminal, one BATCH_COMPLETED
            final = self.batch_is_final(key)
            if final:
                failures = row["failed_count"] + row["canceled_count"]
                expected = "COMPLETED_WITH_FAILURES" if failures else "COMPLETED"
            else:
                expected = "IN_PROGRESS" if batch.started else "PENDING"
            assert row["status"] == expected, (row, counted)
            assert (row["completed_at"] is not None) == final
            assert (row["started_at"] is not None) == batch.started
            kinds = [e["event_type"] for e in events[key]]
            assert kinds == batch.events
            assert final == batch.completed
            assert row["is_open"] == batch.open
            assert (row["canceled_at"] is not None) == batch.canceled
            assert (row["first_failure_at"] is not None) == batch.failed
            if batch.canceled:  # nothing of it waits for another attempt
                assert counted[PENDING] == 0, (row, counted)
            if final:
                assert events[key][-1]["details"] == {
                    "status": expected,
                    "total_count": row["total_count"],
                    "completed_count": row["completed_count"],
                    "failed_count": row["failed_count"],
                    "canceled_count": row["canceled_count"],
                }

    @invariant()
    def each_follow_up_exists_once_if_its_event_happened(self) -> None:
        """Invariant 7, with the batch as the follow-up's data says it was."""
        found: dict[tuple[Key, str], list[DictRow]] = {}
        for row in self.sql(
            "SELECT c.command_type, c.data, b.status, b.total_count, b.completed_count,"
            " b.failed_count, b.canceled_count FROM triobus.command c"
            " JOIN triobus.batch b ON b.domain = c.data->'batch'->>'domain'"
            " AND b.batch_id = (c.data->'batch'->>'batch_id')::uuid WHERE c.domain = %s",
            (FOLLOW_UP_DOMAIN,),
        ):
            batch = row["data"]["batch"]
            key = (batch["domain"], uuid.UUID(batch["batch_id"]))
            found.setdefault((key, row["command_type"]), []).append(row)
        expected = set()
        for key, batch in self.batches.items():
            success = (
                batch.completed
                and not batch.canceled
                and not any(self.commands[k].status in (FAILED, CANCELED) for k in batch.commands)
            )
            for follow_up, happened in (
                (FollowUpEvent.ON_COMPLETE, batch.completed),
                (FollowUpEvent.ON_SUCCESS, success),
                (FollowUpEvent.ON_FAILURE, batch.failed),
            ):
                if happened:
                    expected.add((key, str(follow_up)))
        assert set(found) == expected
        for (_, kind), rows in found.items():
            assert len(rows) == 1, rows
            (row,) = rows
            assert row["data"]["batch"]["event"] == kind
            if kind != FollowUpEvent.ON_FAILURE:  # sent with the completion: final counts
                sent = row["data"]["batch"]
                assert (sent["status"], sent["total_count"], sent["completed_count"]) == (
                    row["status"],
                    row["total_count"],
                    row["completed_count"],
                )
                assert (sent["failed_count"], sent["canceled_count"]) == (
                    row["failed_count"],
                    row["canceled_count"],
                )


def test_store_state_machine(triobus_dsn: str) -> None:
    with (
        Portal(triobus_dsn).open() as portal,
        psycopg.connect(triobus_dsn, autocommit=True, row_factory=dict_row) as db,
    ):
        StoreMachine.portal, StoreMachine.db = portal, db
        try:
            run_state_machine_as_test(
                StoreMachine,
                settings=settings(
                    max_examples=100,
                    stateful_step_count=50,
                    deadline=None,
                    derandomize=True,
                    report_multiple_bugs=False,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                ),
            )
        finally:
            StoreMachine.portal = StoreMachine.db = None

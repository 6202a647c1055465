"""What leaves ``async with open_producer(...)``: a pure decision, tested without a broker.

Inputs are what happened while the producer was open and while it closed; the output
is the one exception to raise (or ``None``) and what to attach to it. Nothing here
awaits or touches Kafka, so every combination can be checked by a plain unit test
(tests/unit/test_exit.py).

The rules, in order:

1. ``KeyboardInterrupt`` wins: wherever it landed (the body, the drain, the stop), the
   bare ``KeyboardInterrupt`` leaves -- never a group, never another exception.
   Undelivered messages go to ``Producer.undelivered`` and a note.
2. The body's own exception wins over the producer's (trio-websocket's rule: the
   user's error wins over cleanup errors); undelivered messages are attached (note,
   ``Producer.undelivered``, ERROR log), never hidden.
3. Otherwise the producer's own failure leaves: ``KafkaFatalError``, the one failed
   ``DeliveryError`` that failed the producer, or ``UndeliveredMessagesError``. It wins
   over a cancellation of the block (a cancellation that hid undelivered messages
   would be a silent loss), and over secondary errors that the failure itself caused
   in the body (``ProducerClosedError`` from a send after the producer failed).
4. A bug in the background tasks surfaces with its traceback: as the cause of an
   ``UndeliveredMessagesError`` that still hands every message back.
5. Nothing went wrong: the body's cancellation (if any) continues untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from ._exceptions import (
    DeliveryError,
    KafkaFatalError,
    ProducerClosedError,
    TrioProducerError,
    UndeliveredMessagesError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._message import KafkaErrorInfo

INTERNAL_ERROR = "internal error in trio_producer, please report it"


def only(exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` is one of ``kinds``, or a (nested) group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(kinds)[1]
        return rest is None
    return isinstance(exc, kinds)


def find_keyboard_interrupt(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The first ``KeyboardInterrupt`` in ``exc`` (itself, or a leaf of a group)."""
    if exc is None:
        return None
    if isinstance(exc, KeyboardInterrupt):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_keyboard_interrupt(inner)
            if found is not None:
                return found
    return None


def is_secondary(exc: BaseException) -> bool:
    """A ``Cancelled``, or a ``ProducerClosedError`` caused by the producer's own failure."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_secondary(inner) for inner in exc.exceptions)
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, ProducerClosedError) and exc.producer_failed


@attrs.frozen
class Ending:
    """What happened, as seen by ``open_producer`` once its tasks have stopped.

    Attributes:
        body: What the body raised (after the producer's own cancellation of the
            body was absorbed), or ``None``.
        interrupt: A ``KeyboardInterrupt`` that cut the drain or the stop short.
        internal: What the producer's own nursery raised (a bug, or an interrupt
            delivered while it waited for its tasks), or ``None``.
        failures: One ``DeliveryError`` per accepted message that was not delivered
            and not handed to a waiter or a hook.
        failed_by: The failed delivery that failed the producer (no hook), if any.
        fatal: librdkafka's fatal error, if any.
        unknown: Messages with no delivery report after the final purge.
        cut_short: Why the drain was cut short (``Producer.abort``), if it was.
        spool_path: The durable spool that keeps the undelivered messages, if any.
        kept: Accepted messages that never left the spool (store and forward): they
            are in it for the next producer, and counted here.
    """

    body: BaseException | None = None
    interrupt: KeyboardInterrupt | None = None
    internal: BaseException | None = None
    failures: Sequence[DeliveryError] = ()
    failed_by: DeliveryError | None = None
    fatal: KafkaErrorInfo | None = None
    unknown: int = 0
    cut_short: str | None = None
    spool_path: str | None = None
    kept: int = 0


@attrs.frozen
class Verdict:
    """The decision.

    Attributes:
        raise_: The exception to raise, or ``None`` to leave normally.
        undelivered: What goes into ``Producer.undelivered`` (when ``raise_`` is not the
            producer's own error carrying them).
        notes: Notes to add to ``raise_``.
        log_error: Whether to log the undelivered messages at ERROR (they are attached
            to an exception that is not the producer's).
        internal_bug: A bug to log at ERROR with its traceback (it does not leave as
            the main exception).
    """

    raise_: BaseException | None
    undelivered: tuple[DeliveryError, ...] = ()
    notes: tuple[str, ...] = ()
    log_error: bool = False
    internal_bug: BaseException | None = None


def producer_error(ending: Ending) -> TrioProducerError | None:
    """The producer's own error, or ``None`` when everything accepted was delivered."""
    failures = ending.failures
    unknown = ending.unknown
    if ending.fatal is not None:
        fatal = KafkaFatalError(ending.fatal, failures)
        if ending.spool_path is not None and (failures or ending.kept):
            # (not raised as an UndeliveredMessagesError: say here what the spool keeps)
            fatal.add_note(
                f"trio_producer: {ending.kept} accepted message(s) never left the spool; "
                f"those and the purged ones are kept in the spool {ending.spool_path!r} for "
                "the next producer"
            )
        return fatal
    if len(failures) == 1 and ending.failed_by is failures[0] and not unknown:
        return failures[0]
    if not failures and not unknown and not ending.kept:
        return None
    reasons = []
    if ending.cut_short:
        reasons.append(f"the drain was cut short: {ending.cut_short}")
    if unknown:
        # librdkafka reports every purged message at once; if some never came back,
        # their content is gone, but their number is still raised, not only logged.
        reasons.append(f"and {unknown} more with no delivery report after the purge")
    if ending.kept:
        reasons.append(f"and {ending.kept} more that never left the spool")
    if ending.spool_path is not None:
        reasons.append(
            f"those purged or never sent (_PURGE_*, _NOT_PRODUCED) are kept in the spool "
            f"{ending.spool_path!r}: the next producer that opens it sends them first"
        )
    error = UndeliveredMessagesError(failures, "; ".join(reasons), spool_path=ending.spool_path)
    if ending.failed_by is not None:
        error.__cause__ = ending.failed_by
    return error


def _undelivered_notes(ending: Ending) -> tuple[str, ...]:
    notes = []
    if ending.failures:
        notes.append(
            f"trio_producer: {len(ending.failures)} accepted message(s) were not delivered; "
            "they are in Producer.undelivered"
        )
    if ending.unknown:
        notes.append(
            f"trio_producer: {ending.unknown} accepted message(s) got no delivery report "
            "after the purge"
        )
    if ending.spool_path is not None and (ending.failures or ending.kept):
        notes.append(
            f"trio_producer: {ending.kept} more never left the spool; those and the purged "
            f"ones are kept in the spool {ending.spool_path!r} for the next producer"
        )
    return tuple(notes)


def _bug(internal: BaseException | None) -> BaseException | None:
    """The part of the nursery's exception that is a bug (not an interrupt or a cancellation)."""
    if internal is None or only(internal, (KeyboardInterrupt, trio.Cancelled)):
        return None
    if isinstance(internal, BaseExceptionGroup):
        rest = internal.split((KeyboardInterrupt, trio.Cancelled))[1]
        if rest is not None and len(rest.exceptions) == 1:
            return rest.exceptions[0]
        return rest
    return internal


def decide(ending: Ending) -> Verdict:
    """Decide what leaves the block. Pure: no I/O, no Trio calls."""
    body = ending.body
    bug = _bug(ending.internal)
    failures = tuple(ending.failures)

    # 1. KeyboardInterrupt wins, as itself.
    ki = (
        find_keyboard_interrupt(body)
        or ending.interrupt
        or find_keyboard_interrupt(ending.internal)
    )
    if ki is not None:
        notes = list(_undelivered_notes(ending))
        if ending.fatal is not None:
            notes.append(f"trio_producer: fatal Kafka error: {ending.fatal}")
        if bug is not None:
            notes.append(f"trio_producer: {INTERNAL_ERROR}: {bug!r}")
        return Verdict(
            ki, undelivered=failures, notes=tuple(notes), log_error=bool(failures), internal_bug=bug
        )

    error = producer_error(ending)
    body_is_own = body is not None and not (
        only(body, trio.Cancelled)
        or (
            is_secondary(body)
            and (ending.failed_by is not None or ending.fatal is not None or ending.cut_short)
        )
    )

    # 2. The body's own exception wins; nothing undelivered is hidden.
    if body_is_own:
        assert body is not None
        notes = list(_undelivered_notes(ending))
        if bug is not None:
            notes.append(f"trio_producer: {INTERNAL_ERROR}: {bug!r}")
        return Verdict(
            body,
            undelivered=failures,
            notes=tuple(notes),
            log_error=bool(failures),
            internal_bug=bug,
        )

    # 4. A bug in the background tasks: every message is still handed back.
    if bug is not None:
        wrapped = UndeliveredMessagesError(failures, INTERNAL_ERROR)
        wrapped.__cause__ = bug
        if body is not None:
            wrapped.__context__ = body
        return Verdict(wrapped, undelivered=failures)

    # 3. The producer's own failure wins over a cancellation and over secondary errors.
    if error is not None:
        if body is not None:
            error.__context__ = body
        return Verdict(error)

    # 5. The body's cancellation (or secondary error) goes on untouched.
    return Verdict(body)

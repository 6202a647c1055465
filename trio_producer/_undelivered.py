"""Every undelivered message, whatever exception ended the block: one place to collect them.

What leaves ``async with open_producer(...)`` depends on how it ended (see ``_exit``): an
:class:`UndeliveredMessagesError`, a bare :class:`DeliveryError`, a
:class:`KafkaFatalError`, the body's own exception or a ``KeyboardInterrupt`` with the
messages attached, an exception group around any of them. :func:`undelivered_failures`
walks all of that, so the application needs one handler, not one per ending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exceptions import DeliveryError, KafkaFatalError, UndeliveredMessagesError

if TYPE_CHECKING:
    from ._message import Message

#: The attribute ``open_producer`` sets on an exception that is not its own (the body's,
#: ``KeyboardInterrupt``) to attach the messages it did not deliver.
ATTACHED = "_trio_producer_undelivered"


def attach(exc: BaseException, failures: tuple[DeliveryError, ...]) -> None:
    """Attach ``failures`` to ``exc`` (after those of an inner producer, if any)."""
    setattr(exc, ATTACHED, (*getattr(exc, ATTACHED, ()), *failures))


def undelivered_failures(exc: BaseException | None) -> tuple[DeliveryError, ...]:
    """Every accepted message that ``exc`` says was not delivered, with its reason.

    Walks ``exc``, the exceptions of a group (nested too), explicit causes
    (``raise ... from``), and what ``open_producer`` attached: the ``failures`` of
    :class:`UndeliveredMessagesError` and :class:`KafkaFatalError`, a bare
    :class:`DeliveryError` (a fire-and-forget failure, or a ``send_and_wait`` that raised
    out of the block), the messages attached to the body's own exception or to a
    ``KeyboardInterrupt`` (also in ``Producer.undelivered``), and those of an aborted
    transaction (``transaction_undelivered``). Each failure once, in the order found.

    With a durable spool, the purged and never-sent ones (``_PURGE_*``,
    ``_NOT_PRODUCED``) also stay in the spool, which sends them again
    (:attr:`UndeliveredMessagesError.spool_path`).

    Args:
        exc: What the ``async with open_producer(...)`` block raised (or ``None``).

    Returns:
        One :class:`DeliveryError` per undelivered message (``.message``, ``.error``,
        ``.possibly_delivered``); empty when ``exc`` carries none.
    """
    found: dict[int, DeliveryError] = {}
    seen: set[int] = set()

    def add(failures: tuple[DeliveryError, ...] | list[DeliveryError]) -> None:
        for failure in failures:
            found.setdefault(id(failure), failure)

    def walk(e: BaseException | None) -> None:
        if e is None or id(e) in seen:
            return
        seen.add(id(e))
        if isinstance(e, DeliveryError):
            add([e])
        if isinstance(e, UndeliveredMessagesError | KafkaFatalError):
            add(e.failures)
        add(getattr(e, ATTACHED, ()))
        add(getattr(e, "transaction_undelivered", ()))
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        walk(e.__cause__)

    walk(exc)
    return tuple(found.values())


def undelivered_messages(exc: BaseException | None) -> tuple[Message, ...]:
    """The messages of :func:`undelivered_failures`: what to persist or send again.

    ::

        try:
            async with open_producer(config) as producer:
                ...
        except BaseException as exc:
            persist(trio_producer.undelivered_messages(exc))
            raise
    """
    return tuple(failure.message for failure in undelivered_failures(exc))

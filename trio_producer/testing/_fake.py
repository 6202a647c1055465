"""A fake producer for unit tests of application code: no broker, no librdkafka.

:func:`open_fake_producer` runs the real producer -- ``open_producer``'s own code: the
:class:`~trio_producer.Producer`, the batch channel, the worker, the delivery task and
its poll thread, the exit decision -- over a fake cluster
(:class:`~trio_producer.testing._backend.FakeConfluentProducer`, in librdkafka's place).
What a test of the application sees is what production does, because it is the same
code; only the cluster is simulated: offsets, partitions, failures (``fail=``), an
unreachable cluster (:attr:`FakeProducer.unreachable`).

It yields a :class:`FakeProducer`: the real ``Producer`` class, with what a test
inspects added (``sent``, ``delivered``, ``failed``, ``values()``, ``keys()``,
``unreachable``) and nothing of it overridden.

Under ``autojump_clock`` (a :class:`trio.testing.MockClock` that jumps when every task
waits) the poll thread would race the clock: the clock jumps while a task waits for a
thread. So while the fake cluster has delivery reports (or, with messages waiting, the
errors of a cluster that went away) that the delivery task has not handed over yet, the
clock waits for them (its ``autojump_threshold`` is raised for that long): deliveries
take no virtual time, and the results are the same on every run.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from .._batch import message_from_pending
from .._config import ProducerConfig
from .._lifecycle import _check_hook, _open_producer
from .._producer import Producer
from ..serialization import Field, K, V
from ._backend import FakeConfluentProducer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

    from .._delivery import DeliveryTracker
    from .._exceptions import DeliveryError
    from .._intake import Intake
    from .._message import ConsumedRecord, KafkaErrorInfo, Message
    from .._serializing import Encoder
    from .._state import ProducerState
    from .._worker import BatchChannel
    from ..serialization import Serializer

__all__ = ["FakeProducer", "open_fake_producer"]

#: The ``autojump_threshold`` (real seconds) of a ``MockClock`` while the delivery task
#: has reports to hand over: it hands them over in microseconds, and the clock jumps
#: (past this bound) only if something is wrong.
HOLD_THRESHOLD = 5.0


class FakeProducer(Producer[K, V]):
    """What :func:`open_fake_producer` yields: the real :class:`~trio_producer.Producer`
    over a fake cluster, with what a test inspects. Do not create it yourself.

    Every method is the real producer's (so are its checkpoints, its errors and its
    exit); only these are added.

    Attributes:
        failed: One :class:`~trio_producer.DeliveryError` per failed delivery report, in
            order: failed by ``fail=``, by a partition that does not exist, or purged at
            the exit (also those handed to ``on_delivery_error`` or raised by
            ``send_and_wait``: the same objects).
        undelivered: As :attr:`Producer.undelivered`.
    """

    def __init__(
        self,
        channel: BatchChannel,
        tracker: DeliveryTracker,
        state: ProducerState,
        intake: Intake,
        encoder: Encoder | None,
        transaction_timeout: float = 30.0,
        *,
        managed_transactions: bool = False,
        backend: FakeConfluentProducer,
    ) -> None:
        super().__init__(
            channel,
            tracker,
            state,
            intake,
            encoder,
            transaction_timeout,
            managed_transactions=managed_transactions,
        )
        self._backend = backend
        self.failed: list[DeliveryError] = []

    @property
    def sent(self) -> list[Message]:
        """Every accepted message, in acceptance order (as the application gave it, after
        serialization), whatever became of it: those handed to the fake cluster, then
        those still waiting for the worker (or that it never handed over)."""
        unsent = [message_from_pending(item) for item in self._channel.unsent()]
        return [*self._backend.sent, *unsent]

    @property
    def delivered(self) -> list[ConsumedRecord]:
        """What a consumer would read back, in the order it was written to the fake
        cluster: one :class:`~trio_producer.testing.ConsumedRecord` per message, with its
        partition and offset."""
        return self._backend.delivered

    @property
    def unreachable(self) -> bool:
        """Whether the fake cluster is unreachable (``False`` unless set).

        Set to ``True`` and nothing is delivered: accepted messages wait
        (``send_and_wait`` and ``flush`` wait), and at the exit, after ``close_timeout``,
        they come back in the exception as ``_PURGE_QUEUE`` failures, as the real
        producer's do. The delivery task sees the errors of a cluster that went away
        (``_ALL_BROKERS_DOWN``): :attr:`~trio_producer.Producer.cluster_reachable` turns
        ``False`` at its next poll (at once while messages wait), and ``True`` again with
        the next delivery. Set back to ``False`` and what waits is delivered, in order."""
        return self._backend.unreachable

    @unreachable.setter
    def unreachable(self, value: bool) -> None:
        self._backend.unreachable = value

    def values(self, topic: str | None = None) -> list[bytes | None]:
        """The values delivered (to ``topic``, or to any topic), in delivery order."""
        return [r.value for r in self.delivered if topic is None or r.topic == topic]

    def keys(self, topic: str | None = None) -> list[bytes | None]:
        """The keys delivered (to ``topic``, or to any topic), in delivery order."""
        return [r.key for r in self.delivered if topic is None or r.topic == topic]


class _Rig:
    """One fake producer's parts around the real one: makes the fake cluster (for
    ``KafkaClient``) and the handle (for ``open_producer``'s code), watches the delivery
    task (a :class:`~trio_producer._delivery.PollObserver`), and holds a ``MockClock``
    while the delivery task has reports to hand over (see the module's docstring)."""

    def __init__(
        self,
        partitions: int,
        fail: Callable[[Message], KafkaErrorInfo | str | None] | None,
        unreachable: bool,
    ) -> None:
        self._partitions = partitions
        self._fail = fail
        self._unreachable = unreachable
        self._backend: FakeConfluentProducer | None = None
        self._failed: list[DeliveryError] = []
        #: What the delivery task has handed over: the fake cluster's served counts
        #: (reports, errors) as of its last pass (``after_poll``).
        self._handed = (0, 0)
        self._clock: trio.testing.MockClock | None = None
        self._threshold = 0.0

    def connect(self, conf: dict[str, Any]) -> FakeConfluentProducer:
        """``producer_class``: the fake cluster, in ``confluent_kafka.Producer``'s place."""
        self._backend = FakeConfluentProducer(
            conf, partitions=self._partitions, fail=self._fail, unreachable=self._unreachable
        )
        return self._backend

    def build(
        self,
        channel: BatchChannel,
        tracker: DeliveryTracker,
        state: ProducerState,
        intake: Intake,
        encoder: Encoder | None,
        transaction_timeout: float,
        *,
        managed_transactions: bool = False,
    ) -> FakeProducer[Any, Any]:
        """``producer_type``: the handle, watching ``tracker``."""
        backend = self._backend
        assert backend is not None  # (the client is made first)
        producer = FakeProducer[Any, Any](
            channel,
            tracker,
            state,
            intake,
            encoder,
            transaction_timeout,
            managed_transactions=managed_transactions,
            backend=backend,
        )
        self._failed = producer.failed
        backend.on_work = self._pace
        tracker.observer = self
        return producer

    def after_poll(self, tracker: DeliveryTracker) -> None:
        """The delivery task has the reports of its last poll (Trio thread): note the
        failures it is about to hand over, and what it has handed over."""
        for epoch in tracker.epochs:
            self._failed.extend(failure.error for failure in epoch.failures[epoch.routed :])
        backend = self._backend
        assert backend is not None
        self._handed = (backend.reports_served, backend.errors_served)
        self._pace()

    def _pace(self) -> None:
        """Hold a ``MockClock`` while the delivery task has something to hand over (which
        it will at once: it polls while messages are in flight); let it go after."""
        backend = self._backend
        assert backend is not None
        reports, errors = self._handed
        due = backend.reports_made > reports or (
            backend.errors_made > errors and backend.queued > 0
        )
        if due and self._clock is None:
            clock = trio.lowlevel.current_clock()
            if isinstance(clock, trio.testing.MockClock):
                threshold = clock.autojump_threshold
                if threshold < HOLD_THRESHOLD:
                    self._clock, self._threshold = clock, threshold
                    clock.autojump_threshold = HOLD_THRESHOLD
        elif not due:
            self.release()

    def release(self) -> None:
        """Let the clock jump as it did (unless the test changed it meanwhile)."""
        clock, self._clock = self._clock, None
        if clock is not None and clock.autojump_threshold == HOLD_THRESHOLD:
            clock.autojump_threshold = self._threshold


def open_fake_producer(
    *,
    fail: Callable[[Message], KafkaErrorInfo | str | None] | None = None,
    on_delivery_error: Callable[[DeliveryError], object] | None = None,
    partitions: int = 1,
    queue_capacity: int = 10_000,
    close_timeout: float = 30.0,
    unreachable: bool = False,
    key_serializer: Serializer[K] | None = None,
    value_serializer: Serializer[V] | None = None,
) -> AbstractAsyncContextManager[FakeProducer[K, V]]:
    """Open a fake producer for the duration of an ``async with`` block: no broker.

    It is the real producer (``open_producer``'s code) over a fake cluster, so it keeps
    the promise as :func:`~trio_producer.open_producer` does: on leaving the block it
    waits (at most ``close_timeout``, shielded) for what is in flight, and what was not
    delivered leaves in the exception -- :class:`DeliveryError`,
    :class:`UndeliveredMessagesError`, or attached to the body's own exception. The
    worker hands each message to the fake cluster at its next turn (``linger`` is 0),
    which writes it at once; the delivery task serves the reports from its poll thread.
    Under ``autojump_clock`` all of it is deterministic and takes no virtual time.

    Entering and leaving are checkpoints, as for ``open_producer``.

    Args:
        fail: Called (on the Trio thread) with each message as the fake cluster writes
            it: return ``None`` to deliver it, or a librdkafka error name
            (``"MSG_SIZE_TOO_LARGE"``) or a :class:`KafkaErrorInfo` to fail it with. If
            it raises (or returns anything else), the message fails with
            ``_INVALID_ARG`` saying so, and what it raised is logged.
        on_delivery_error: As for ``open_producer``.
        partitions: Partitions of every topic. Without ``partition=``, a keyed message
            goes to ``crc32(key) % partitions`` (librdkafka's ``consistent``), others in
            turn; ``partition=`` beyond them fails with ``_UNKNOWN_PARTITION``.
        queue_capacity: As for ``open_producer``: how many accepted messages may wait
            for the worker (``send`` waits, ``send_nowait`` raises).
        close_timeout: As for ``open_producer``. Only :attr:`FakeProducer.unreachable`
            makes the exit wait for it: use ``autojump_clock`` (or a small value).
        unreachable: The initial :attr:`FakeProducer.unreachable`.
        key_serializer: As for ``open_producer``.
        value_serializer: As for ``open_producer``.

    Raises:
        ConfigError: A bad ``queue_capacity`` or ``close_timeout`` (the real checks).
        ValueError: ``partitions`` is not an int >= 1.
        TypeError: A hook, ``fail`` or a serializer is not a plain callable.
    """
    config = ProducerConfig(
        bootstrap_servers="fake:9092",
        linger=0,
        queue_capacity=queue_capacity,
        close_timeout=close_timeout,
    )
    if type(partitions) is not int or partitions < 1:
        raise ValueError(f"partitions must be an int >= 1, not {partitions!r}")
    if fail is not None and not callable(fail):
        raise TypeError(f"fail must be a callable or None, not {fail!r:.80}")
    # (open_producer checks these when entered: here they raise at the call, as before)
    _check_hook(on_delivery_error)
    for name, serializer in (("key", key_serializer), ("value", value_serializer)):
        if serializer is not None:
            Field[Any](name, serializer)
    rig = _Rig(partitions, fail, unreachable)
    opening = _open_producer(
        config,
        {},
        on_delivery_error=on_delivery_error,
        on_statistics=None,
        oauth_token=None,
        telemetry=None,
        key_serializer=key_serializer,
        value_serializer=value_serializer,
        producer_class=rig.connect,
        producer_type=rig.build,
    )
    return _running(opening, rig)


@asynccontextmanager
async def _running(
    opening: AbstractAsyncContextManager[Producer[Any, Any]], rig: _Rig
) -> AsyncIterator[FakeProducer[Any, Any]]:
    try:
        async with opening as producer:
            assert isinstance(producer, FakeProducer)
            yield producer
    finally:
        rig.release()

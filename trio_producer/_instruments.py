"""What ``open_producer(telemetry=...)`` takes: the protocols telemetry implements.

:mod:`trio_producer.otel` has the implementation. These sit above the producer and the
delivery task (they name both), so nothing below imports them: the delivery task knows
only its own :class:`~trio_producer._delivery.PollObserver`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ._delivery import PollObserver

if TYPE_CHECKING:
    from ._producer import Producer
    from ._worker import Sink


class ProducerInstruments(PollObserver, Protocol):
    """What telemetry (see :mod:`trio_producer.otel`) does for one open producer."""

    def wrap_sink(self, sink: Sink) -> Sink:
        """The worker's sink, counting what it hands to librdkafka (per batch)."""

    def close(self) -> None:
        """The producer closed: stop observing it."""


class Instrumentation(Protocol):
    """The ``telemetry=`` argument of :func:`open_producer`, e.g.
    :class:`trio_producer.otel.Telemetry`."""

    def attach(self, producer: Producer) -> ProducerInstruments:
        """Start observing one producer (called once, when it opens)."""

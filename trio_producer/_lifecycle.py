"""open_producer: the nursery, the background tasks, the shutdown order, the exit."""

from __future__ import annotations

import inspect
import logging
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, overload

import trio

from . import _signals
from ._batch import Batch, Pending
from ._client import NOT_PRODUCED, KafkaClient, TrackedReport, failure_from_pending
from ._config import ProducerConfig, make_config
from ._delivery import DeliveryTracker
from ._exceptions import (
    ConfigError,
    DeliveryError,
    KafkaFatalError,
)
from ._exit import Ending, decide, find_keyboard_interrupt
from ._hooks import (
    DEFAULT_STATISTICS_INTERVAL_MS,
    Hooks,
    check_sync_hook,
    fetch_first_token,
    provider_error,
)
from ._intake import MemoryIntake
from ._producer import Producer
from ._serializing import Encoder
from ._state import CUT_SHORT_GRACE, STOP_GRACE, ProducerState
from ._undelivered import attach
from ._worker import BatchChannel, run_worker
from .serialization import Field, K, V
from .spool import SpoolParts, open_spooled

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from typing import Unpack

    from ._config import ProducerFields
    from ._hooks import KafkaStatistics, OAuthTokenProvider
    from ._instruments import Instrumentation, ProducerInstruments
    from ._intake import Intake
    from ._worker import Sink
    from .serialization import Serializer

logger = logging.getLogger("trio_producer")


enable_ki_protection = trio.lowlevel.enable_ki_protection

#: After a Ctrl-C in the body, a drain still waiting after this many seconds says so;
#: a drain to an unreachable cluster says so at once if it may wait this long.
DRAIN_NOTICE = 1.0


def _check_hook(hook: object) -> Callable[[DeliveryError], object] | None:
    if hook is None:
        return None
    if not callable(hook):
        raise TypeError(f"on_delivery_error must be a callable or None, not {hook!r:.80}")
    call = getattr(hook, "__call__", None)  # noqa: B004 - an async __call__ counts too
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(call):
        raise TypeError(
            f"on_delivery_error must be a plain (sync) function, not the async function "
            f"{hook!r:.80}: it is called on the Trio thread for each failed delivery and "
            "must not block; to do async work, hand the failure to a task, e.g. with "
            "a memory channel's send_nowait"
        )
    return hook


@overload
def open_producer(
    config: ProducerConfig,
    /,
    *,
    on_delivery_error: Callable[[DeliveryError], object] | None = None,
    on_statistics: Callable[[KafkaStatistics], object] | None = None,
    oauth_token: OAuthTokenProvider | None = None,
    telemetry: Instrumentation | None = None,
    key_serializer: Serializer[K] | None = None,
    value_serializer: Serializer[V] | None = None,
) -> AbstractAsyncContextManager[Producer[K, V]]: ...


@overload
def open_producer(
    *,
    on_delivery_error: Callable[[DeliveryError], object] | None = None,
    on_statistics: Callable[[KafkaStatistics], object] | None = None,
    oauth_token: OAuthTokenProvider | None = None,
    telemetry: Instrumentation | None = None,
    key_serializer: Serializer[K] | None = None,
    value_serializer: Serializer[V] | None = None,
    **fields: Unpack[ProducerFields],
) -> AbstractAsyncContextManager[Producer[K, V]]: ...


def open_producer(
    config: ProducerConfig | None = None,
    /,
    *,
    on_delivery_error: Callable[[DeliveryError], object] | None = None,
    on_statistics: Callable[[KafkaStatistics], object] | None = None,
    oauth_token: OAuthTokenProvider | None = None,
    telemetry: Instrumentation | None = None,
    key_serializer: Serializer[Any] | None = None,
    value_serializer: Serializer[Any] | None = None,
    **fields: Any,
) -> AbstractAsyncContextManager[Producer[Any, Any]]:
    """Open a Kafka producer for the duration of an ``async with`` block.

    Either pass a :class:`ProducerConfig`, or its fields as keywords::

        async with open_producer(bootstrap_servers="localhost:9092", linger=0.01) as p:
            await p.send("events", b"hello")

    On leaving the block -- normally, by an exception, by cancellation or by
    ``KeyboardInterrupt`` -- the producer stops accepting messages, hands its last batch
    to librdkafka (the final drain) and waits for every delivery report, for at most
    ``close_timeout`` seconds, shielded from cancellation. What was not confirmed by
    then is purged and raised as :class:`UndeliveredMessagesError`. The block's own
    exception wins; the undelivered messages are then attached to it as a note, logged
    at ERROR and kept in :attr:`Producer.undelivered`.

    A ``KeyboardInterrupt`` while the drain waits (a second Ctrl-C), or
    :meth:`Producer.abort`, cuts the wait short: messages already sent get about a
    second to be confirmed, the rest is purged and handed back. ``KeyboardInterrupt``
    always leaves as itself, never wrapped in a group.

    Entering is a checkpoint (inside a cancelled scope it raises ``Cancelled`` at
    once); so is leaving.

    Args:
        config: The configuration.
        on_delivery_error: Called (on the Trio thread, must not block) with each failed
            fire-and-forget delivery. Must be a plain function (an ``async def`` is
            refused with ``TypeError``). Without it, the first failure fails the
            producer: the block is cancelled and leaves with :class:`DeliveryError`
            (or :class:`UndeliveredMessagesError` when several messages failed).
        on_statistics: Called on the Trio thread (must not block) with each
            :class:`KafkaStatistics` snapshot librdkafka emits, every
            ``statistics.interval.ms`` (5 s when this is given without it). The latest is
            also in :attr:`Producer.kafka_statistics`. Exceptions are logged and ignored.
        oauth_token: For ``sasl.mechanism=OAUTHBEARER``: a plain function returning an
            :class:`OAuthToken`. Called once in a worker thread while opening (if it
            raises, ``open_producer`` raises :class:`KafkaFatalError` at once; if the
            opening is cancelled or interrupted while it runs, the thread is abandoned,
            so a provider that hangs does not hold the caller past its deadline), then in
            librdkafka's background thread when the token is due for a refresh (never
            on the Trio thread; it may block, it must not touch Trio). A failed refresh
            is a warning while the current token is valid; once it has expired, the
            producer fails with :class:`KafkaFatalError` and hands back its messages.
        telemetry: Metrics for OpenTelemetry: a :class:`trio_producer.otel.Telemetry`
            (needs the ``otel`` extra). ``None`` (the default) costs nothing.
        key_serializer: Turns each key into bytes in the send call, before the
            message is accepted (see :mod:`trio_producer.serialization`); ``None`` keys
            are not passed to it. Without it, keys are ``bytes`` or ``str`` (UTF-8).
        value_serializer: The same for values (``None`` stays a tombstone). The
            producer is then a ``Producer[K, V]`` of the serializers' input types.
        **fields: :class:`ProducerConfig` fields, instead of ``config`` (type checkers
            check their names and types: :class:`ProducerFields`).

    Raises:
        ConfigError: A bad field, or a property librdkafka rejects (before any task starts).
        TypeError: ``on_delivery_error``, ``on_statistics`` or ``oauth_token`` is not a
            plain callable, or a serializer is not callable.
        UndeliveredMessagesError: Accepted messages were not delivered.
        DeliveryError: A fire-and-forget delivery failed and no hook was given.
        KafkaFatalError: librdkafka reported a fatal error.
    """
    return _open_producer(
        config,
        fields,
        on_delivery_error=on_delivery_error,
        on_statistics=on_statistics,
        oauth_token=oauth_token,
        telemetry=telemetry,
        key_serializer=key_serializer,
        value_serializer=value_serializer,
    )


@asynccontextmanager
@enable_ki_protection
async def _open_producer(
    config: ProducerConfig | None,
    fields: dict[str, Any],
    *,
    on_delivery_error: Callable[[DeliveryError], object] | None,
    on_statistics: Callable[[KafkaStatistics], object] | None,
    oauth_token: OAuthTokenProvider | None,
    telemetry: Instrumentation | None,
    key_serializer: Serializer[Any] | None,
    value_serializer: Serializer[Any] | None,
    producer_class: Callable[[dict[str, Any]], Any] | None = None,
    producer_type: Callable[..., Producer[Any, Any]] = Producer,
) -> AsyncIterator[Producer[Any, Any]]:
    """What :func:`open_producer` opens. The two keywords are the seam of
    ``trio_producer.testing.open_fake_producer``, which runs this same code over a fake
    cluster: ``producer_class`` stands in for ``confluent_kafka.Producer`` (see
    :class:`~trio_producer._client.KafkaClient`), ``producer_type`` builds the handle
    (a subclass of :class:`Producer` that adds what a test inspects)."""
    cfg = make_config(config, fields)
    hook = _check_hook(on_delivery_error)
    check_sync_hook("on_statistics", on_statistics)
    check_sync_hook("oauth_token", oauth_token)
    key_field = Field[Any]("key", key_serializer) if key_serializer is not None else None
    value_field = Field[Any]("value", value_serializer) if value_serializer is not None else None
    await trio.lowlevel.checkpoint_if_cancelled()
    client = await _open_client(cfg, on_statistics, oauth_token, producer_class=producer_class)
    instruments: ProducerInstruments | None = None
    spooled: SpoolParts | None = None
    try:
        # Built in order, each complete when constructed: the spool's parts first (the
        # channel takes its source, the delivery task its hooks, its intake the channel).
        if cfg.spool_path is not None:
            spooled = await open_spooled(cfg, client)
        channel = BatchChannel(
            Batch(cfg.batch_max_messages, cfg.batch_max_bytes, cfg.queue_capacity),
            cfg.linger,
            source=spooled.source if spooled is not None else None,
        )
        state = ProducerState(hook, channel)
        hooks = Hooks(cfg.bootstrap_servers, on_statistics=on_statistics, oauth=client.oauth)
        if spooled is not None:
            intake: Intake = spooled.make_intake(channel)
            tracker = DeliveryTracker(
                client,
                state,
                hooks,
                after_reports=spooled.after_reports,
                before_produce=spooled.before_produce,
                run_reports=spooled.run_reports,
            )
        else:
            intake = MemoryIntake(channel)
            tracker = DeliveryTracker(client, state, hooks)
        encoder = None
        if key_field is not None or value_field is not None:
            encoder = Encoder(channel, key_field, value_field)
        producer: Producer[Any, Any] = producer_type(
            channel,
            tracker,
            state,
            intake,
            encoder,
            cfg.transaction_timeout,
            managed_transactions=cfg.exactly_once,
        )
        if telemetry is not None:
            instruments = telemetry.attach(producer)
            tracker.observer = instruments
        if client.transactional and not cfg.exactly_once:  # (exactly once: open_spooled)
            # Blocking and not cancellable: bounded by its own timeout.
            await trio.to_thread.run_sync(client.init_transactions, cfg.transaction_timeout)
        _signals.register(producer)
        try:
            sink = _sink(tracker, instruments)
            async with _running(intake, state, channel, sink, tracker, cfg, spooled) as ending:
                yield producer
            raise_ = _finish(ending(), state, producer)
        finally:
            state.finish()
            _signals.unregister(producer)
        if raise_ is not None:
            raise raise_
    finally:
        try:
            if spooled is not None:
                await spooled.aclose()
        finally:
            try:
                if instruments is not None:
                    instruments.close()
            finally:
                client.close()


async def _open_client(
    cfg: ProducerConfig,
    on_statistics: Callable[[KafkaStatistics], object] | None,
    oauth_token: OAuthTokenProvider | None,
    *,
    producer_class: Callable[[dict[str, Any]], Any] | None = None,
) -> KafkaClient:
    props = cfg.librdkafka_config()
    if on_statistics is not None:
        props.setdefault("statistics.interval.ms", DEFAULT_STATISTICS_INTERVAL_MS)
    if oauth_token is None:
        return KafkaClient(props, producer_class=producer_class)
    mechanism = props.get("sasl.mechanism", props.get("sasl.mechanisms"))
    if mechanism != "OAUTHBEARER":
        raise ConfigError(
            f"oauth_token needs librdkafka={{'sasl.mechanism': 'OAUTHBEARER', "
            f"'security.protocol': 'SASL_SSL'}}, not sasl.mechanism={mechanism!r}"
        )
    try:
        # Abandoned on cancellation: a provider that hangs must not hold the caller past
        # its deadline (the thread ends when the provider returns; its token is dropped).
        first = await trio.to_thread.run_sync(
            fetch_first_token, oauth_token, abandon_on_cancel=True
        )
    except Exception as exc:
        raise KafkaFatalError(provider_error(exc, fatal=True)) from exc
    # confluent-kafka waits (about a second) for librdkafka to take the first token.
    return await trio.to_thread.run_sync(
        partial(
            KafkaClient,
            props,
            oauth_token=oauth_token,
            first_token=first,
            producer_class=producer_class,
        )
    )


def _sink(tracker: DeliveryTracker, instruments: ProducerInstruments | None) -> Sink:
    """The worker's sink: the tracker, counted by the telemetry when there is one."""
    return tracker if instruments is None else instruments.wrap_sink(tracker)


@asynccontextmanager
@enable_ki_protection
async def _running(
    intake: Intake,
    state: ProducerState,
    channel: BatchChannel,
    sink: Sink,
    tracker: DeliveryTracker,
    cfg: ProducerConfig,
    spooled: SpoolParts | None,
) -> AsyncIterator[Callable[[], Ending]]:
    """Run the background tasks around the body; on the way out, drain, stop, collect.

    Yields a function that, once this context has exited, describes how it ended. This
    context never raises: everything (the body's exception included) goes into the
    :class:`Ending`, and :func:`decide` makes the one decision.
    """
    body_exc: BaseException | None = None
    interrupt: KeyboardInterrupt | None = None
    internal: BaseException | None = None
    ending: Ending | None = None

    def get_ending() -> Ending:
        assert ending is not None
        return ending

    try:
        async with trio.open_nursery() as nursery:
            # The background tasks are shielded from the block's cancellation: they stop
            # when the shutdown cancels their scopes -- in ``finally``, so that nothing
            # (KeyboardInterrupt included) can skip that and leave the nursery waiting.
            worker_scope = trio.CancelScope(shield=True)
            delivery_scope = trio.CancelScope(shield=True)
            spool_scope = trio.CancelScope(shield=True)
            worker_done = trio.Event()
            if spooled is not None:
                run_spool = partial(spooled.run, tracker.run_exclusive, state)
                nursery.start_soon(_background, spool_scope, None, run_spool, state)
            nursery.start_soon(_background, delivery_scope, None, tracker.run, state)
            nursery.start_soon(
                _background,
                worker_scope,
                worker_done,
                partial(run_worker, channel, sink),
                state,
            )
            try:
                body_scope = trio.CancelScope()
                state.body_scope = body_scope
                try:
                    # The scope absorbs the producer's own cancellation of the body, also
                    # from inside groups (a nursery in the block); the rest is the body's.
                    with body_scope:
                        yield get_ending
                except BaseException as exc:
                    body_exc = exc
                finally:
                    state.body_scope = None
                interrupt = await _drain(
                    state, channel, tracker, worker_done, worker_scope, cfg, body_exc, spooled
                )
            finally:
                worker_scope.cancel(reason="trio_producer: producer closed")
                delivery_scope.cancel(reason="trio_producer: producer closed")
                spool_scope.cancel(reason="trio_producer: producer closed")
    except BaseException as exc:  # a bug in a background task, or KeyboardInterrupt
        internal = exc
    # Only now, with no task left that uses the client: purge, collect.
    state.stop()
    client = tracker.client
    client.purge()
    client.serve_remaining_reports(time.monotonic() + STOP_GRACE)
    tracker.process()
    for item in channel.unsent():
        _hand_back_unsent(item, state)
    spool_path = None
    if spooled is not None:
        # Where what was not delivered is kept; the spool hands back what it cannot keep.
        spool_path = spooled.at_exit(partial(_hand_back_unsent, state=state), len(state.failures))
    channel.stop()
    tracker.stop()
    ending = Ending(
        body=body_exc,
        interrupt=interrupt,
        internal=internal,
        failures=tuple(state.failures),
        failed_by=state.failed_by,
        fatal=state.fatal,
        unknown=tracker.in_flight,
        cut_short=state.aborted,
        spool_path=spool_path,
        kept=intake.backlog(),
    )


async def _drain(
    state: ProducerState,
    channel: BatchChannel,
    tracker: DeliveryTracker,
    worker_done: trio.Event,
    worker_scope: trio.CancelScope,
    cfg: ProducerConfig,
    body: BaseException | None = None,
    spooled: SpoolParts | None = None,
) -> KeyboardInterrupt | None:
    """Steps 1-3 of the shutdown: close, let the worker drain, wait for the reports.

    Bounded by ``close_timeout`` and shielded. A ``KeyboardInterrupt`` here (or
    ``Producer.abort``) cuts it short; the interrupt is returned, to leave the block.
    The drain never waits in silence for an unreachable cluster: it says at once (a
    WARNING) what it waits for and for how long; after a Ctrl-C in the body it does
    not wait for it at all (what is not delivered is handed back).
    """
    # 1. Close the send side (sync): new sends raise ProducerClosedError.
    state.begin_drain()
    start = trio.current_time()
    deadline = start + cfg.close_timeout
    interrupt: KeyboardInterrupt | None = None
    ctrl_c = find_keyboard_interrupt(body) is not None
    cut = False
    try:
        # 2-3. The worker drains (the channel's end, not a flag, ends its loop); then
        # every delivery report, bounded by close_timeout.
        with trio.CancelScope(deadline=deadline, shield=True) as drain_scope:
            state.drain_scope = drain_scope
            if state.aborted is not None:
                drain_scope.cancel()
            said = False
            if not tracker.hooks.connectivity.reachable and _waiting(tracker, channel):
                said = True  # at once: the cluster is known to be unreachable
                cut = _say_drain(tracker, channel, ctrl_c, deadline)
                if cut:
                    drain_scope.cancel()
            with trio.move_on_at(start + DRAIN_NOTICE) as first:
                await worker_done.wait()
                await tracker.wait_settled()
            if first.cancelled_caught and not said:
                if ctrl_c or not tracker.hooks.connectivity.reachable:
                    cut = _say_drain(tracker, channel, ctrl_c, deadline)
                    if cut:
                        drain_scope.cancel()
            await worker_done.wait()
            await tracker.wait_settled()
            if spooled is not None:
                await spooled.drain(deadline)  # exactly once: the last commit
    except KeyboardInterrupt as ki:
        interrupt = ki
    finally:
        state.drain_scope = None
    if interrupt is None and state.aborted is None and not cut:
        return None
    # Cut short: nothing more goes to librdkafka; what is queued there is purged now;
    # what is already at the broker gets CUT_SHORT_GRACE to be confirmed. Failures from
    # now on (the purged messages) are handed back at the exit, not to the hook (and,
    # with a spool, stay in it).
    state.cut_short()
    if spooled is not None:
        spooled.cut_short(trio.current_time() + CUT_SHORT_GRACE)
    worker_scope.cancel(reason="trio_producer: the drain was cut short")
    try:
        with trio.CancelScope(deadline=trio.current_time() + CUT_SHORT_GRACE, shield=True):
            await worker_done.wait()
            tracker.client.purge(in_flight=False)
            await tracker.wait_settled()
    except KeyboardInterrupt as ki:
        interrupt = interrupt or ki  # another Ctrl-C: stop waiting at all
    return interrupt


def _waiting(tracker: DeliveryTracker, channel: BatchChannel) -> int:
    return tracker.in_flight + len(channel.unsent())


def _say_drain(
    tracker: DeliveryTracker, channel: BatchChannel, ctrl_c: bool, deadline: float
) -> bool:
    """Say (WARNING) what the drain waits for; return True to cut it short (a Ctrl-C
    while the cluster is unreachable: waiting for it would only delay the exit)."""
    waiting = _waiting(tracker, channel)
    unreachable = tracker.hooks.connectivity.describe()
    if ctrl_c and unreachable is not None:
        logger.warning(
            "Ctrl-C while %s: not waiting for the %d undelivered message(s); they are "
            "handed back (Producer.undelivered, trio_producer.undelivered_messages)",
            unreachable.replace(" was ", " is ", 1),
            waiting,
        )
        return True
    left = max(0.0, deadline - trio.current_time())
    if left < DRAIN_NOTICE:
        return False  # no long silence to explain
    why = f"; {unreachable.replace(' was ', ' is ', 1)}" if unreachable is not None else ""
    logger.warning(
        "leaving the producer: waiting up to %.1f s more (close_timeout) for %d message(s) "
        "to be delivered%s; %s",
        left,
        waiting,
        why,
        "Ctrl-C again stops waiting and hands them back"
        if ctrl_c
        else "what is not delivered by then is handed back",
    )
    return False


def _hand_back_unsent(item: Pending, state: ProducerState) -> None:
    """A message accepted but never handed to librdkafka: to its waiter, or the exit."""
    error = failure_from_pending(item, NOT_PRODUCED)
    tracked = item.get("callback")
    if isinstance(tracked, TrackedReport) and tracked.has_waiter:
        assert tracked.waiter is not None
        tracked.failure = error
        tracked.waiter.set()  # its send_and_wait caller (in another task) raises it
        return
    state.failures.append(error)


@enable_ki_protection
async def _background(
    scope: trio.CancelScope,
    done: trio.Event | None,
    fn: Callable[[], Awaitable[object]],
    state: ProducerState,
) -> None:
    try:
        with scope:
            await fn()
    except Exception:
        # A bug: stop waiting for this task's work; the nursery raises it.
        state.abort("internal error in a background task")
        raise
    finally:
        if done is not None:
            done.set()


def _finish(ending: Ending, state: ProducerState, producer: Producer) -> BaseException | None:
    verdict = decide(ending)
    if ending.unknown:
        logger.error(
            "%d message(s) have an unknown delivery status after the purge", ending.unknown
        )
    exc = verdict.raise_
    if verdict.undelivered:
        producer.undelivered = verdict.undelivered
        if exc is not None:
            attach(exc, verdict.undelivered)  # for trio_producer.undelivered_messages
    if exc is not None:
        for note in verdict.notes:
            exc.add_note(note)
    if verdict.internal_bug is not None:
        logger.error(
            "internal error in trio_producer, please report it", exc_info=verdict.internal_bug
        )
    if verdict.log_error:
        logger.error(
            "%d accepted message(s) were not delivered (the block raised %r)",
            len(verdict.undelivered),
            exc,
        )
    return exc

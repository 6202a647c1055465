"""Schema Registry serializers under Trio: confluent's sync serializers, off the Trio thread.

confluent-kafka's async Schema Registry stack (``AsyncSchemaRegistryClient``,
``AsyncAvroSerializer``, ...) is written for asyncio and does not run under Trio: its HTTP
(httpx) works, but a task that serializes for a new subject while another task's
registration request for it is in flight waits on an ``asyncio.Lock``, which fails with
``AttributeError: 'NoneType' object has no attribute 'create_future'``, and every retried
request (a 408, 429 or 5xx answer, a refused connection) calls ``asyncio.sleep``, which
fails with ``RuntimeError: no running event loop``. Its ``mock://`` client never suspends,
so tests with it pass anyway.

Use confluent's *sync* serializer instead, wrapped in :class:`ThreadedSerializer`::

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from trio_producer.schema_registry import ThreadedSerializer

    registry = SchemaRegistryClient({"url": "https://registry:8081", "timeout": 10})
    async with open_producer(
        bootstrap_servers="localhost:9092",
        value_serializer=ThreadedSerializer(AvroSerializer(registry, schema_str)),
    ) as producer:
        await producer.send("users", {"name": "Ada", "age": 36})

The first message of each ``(topic, key/value)`` is serialized in a worker thread (that is
the call that registers or looks up the schema over HTTP); once it succeeded, later ones
are serialized on the Trio thread, where they are plain CPU work. See
:class:`ThreadedSerializer` for exactly when a call still goes through the thread.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

import trio
from confluent_kafka.serialization import SerializationContext, Serializer

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ThreadedSerializer"]

#: A ``(topic, field)`` pair: the unit whose schema id a serializer caches.
_Key = tuple[str, str]


class ThreadedSerializer(Serializer):  # type: ignore[misc, unused-ignore]
    """A confluent sync serializer, called so that the Trio thread never waits on HTTP.

    Pass it as ``key_serializer`` or ``value_serializer`` to
    :func:`~trio_producer.open_producer`. It is an async serializer (its ``__call__`` is
    ``async def``), so :meth:`~trio_producer.Producer.send`, ``send_and_wait`` and
    ``send_many`` await it and ``send_nowait`` refuses it with ``TypeError``. An exception of
    the wrapped serializer comes out of the send as
    :class:`~trio_producer.SerializationError`, and nothing is accepted.

    **Where the call runs.** A call for a ``(topic, field)`` pair that has not yet been
    serialized successfully runs in a worker thread (:func:`trio.to_thread.run_sync`, with
    ``limiter``): for confluent's ``AvroSerializer``, ``JSONSerializer`` and
    ``ProtobufSerializer`` that is the call that resolves the subject name and registers
    (or, with ``auto.register.schemas`` off, looks up) the schema. Concurrent calls for the
    same new pair wait for the first one on a :class:`trio.Lock` -- without blocking the
    Trio thread or holding a worker thread -- and then run on the Trio thread if it
    succeeded, or try the thread themselves if it failed. Once a pair has been serialized
    successfully, its calls run on the Trio thread: in confluent's serializers the subject
    is then in the serializer's ``_known_subjects`` set (never evicted), so the call does no
    registry request.

    Calls always go through the thread (the inline path is never used) when the warm call
    could still reach the registry:

    - the serializer is not one of confluent's Schema Registry serializers
      (``confluent_kafka.schema_registry.serde.BaseSerializer``): unknown code;
    - ``use.latest.version``, ``use.latest.with.metadata`` or ``use.schema.id`` is set: then
      every call asks the client for the reader schema, and the client's caches can expire
      (``cache.latest.ttl.sec``) or evict (``cache.capacity``), and the schema's rules
      (encryption, ...) run, which may call a KMS;
    - the subject name strategy is the *associated* strategy (the default in
      confluent-kafka 2.16) and more distinct ``(topic, field)`` pairs have been seen than
      its subject cache holds (an LRU of 1000): it could then have evicted a pair, and the
      lookup of that pair would be a ``GET /associations/...`` request. From the pair that
      goes over the capacity on, every call goes through the thread.

    The wrapped serializer must be used only through this wrapper (its caches are what
    make the inline path safe), and its subject name strategy must map a ``(topic,
    field)`` pair to one subject, as confluent's built-in strategies do. Clearing
    confluent's caches by hand (``clear_cache()``) voids the guarantee.

    **Cancellation.** A thread call is abandoned on cancellation
    (``abandon_on_cancel=True``): the send raises :class:`trio.Cancelled` at once and
    nothing is accepted, while the thread finishes on its own (confluent's registration is
    idempotent). A Ctrl-C likewise: it abandons a thread call, and interrupts a call on
    the Trio thread (serializers run unprotected from ``KeyboardInterrupt``). Configure
    the client's ``timeout`` (seconds): confluent's default is no timeout, so a
    black-holed registry holds a worker thread -- and a ``limiter`` token -- forever.

    **Checkpoints.** Every call is a checkpoint: the inline path checkpoints before it
    serializes, so a cancelled call never loses a result.

    Note:
        A thread call runs in a copy of the task's :mod:`contextvars` context, so the
        "original key" that confluent's serializers record in a context variable for
        dead-letter-queue rule actions is not seen by a later call on the Trio thread.

    Args:
        serializer: A confluent sync ``Serializer``, e.g. ``AvroSerializer(client,
            schema_str)``. Async ones (``AsyncAvroSerializer``, ...) are refused.
        limiter: The :class:`trio.CapacityLimiter` for the thread calls; ``None`` means
            Trio's default limiter (40 threads).

    Raises:
        TypeError: If ``serializer`` is not a sync confluent ``Serializer``.
    """

    def __init__(
        self, serializer: Serializer, *, limiter: trio.CapacityLimiter | None = None
    ) -> None:
        if not isinstance(serializer, Serializer):
            raise TypeError(
                "ThreadedSerializer wraps a confluent_kafka.serialization.Serializer (e.g. "
                f"AvroSerializer(client, schema_str)), not {type(serializer).__name__} "
                f"{serializer!r:.60}"
            )
        if _is_async(serializer):
            raise TypeError(
                f"ThreadedSerializer wraps a sync serializer, not {type(serializer).__name__}: "
                "confluent's async Schema Registry serializers use asyncio and do not run "
                "under Trio; use the sync one (AsyncAvroSerializer -> AvroSerializer)"
            )
        if limiter is not None and not isinstance(limiter, trio.CapacityLimiter):
            raise TypeError(
                f"limiter must be a trio.CapacityLimiter or None, not {type(limiter).__name__}"
            )
        self._serializer = serializer
        self._limiter = limiter
        self._budget = _inline_budget(serializer)
        self._seen: set[_Key] = set()
        self._warm: set[_Key] = set()
        self._first_calls: dict[_Key, trio.Lock] = {}

    @property
    def serializer(self) -> Serializer:
        """The wrapped confluent serializer."""
        return self._serializer

    @property
    def inline(self) -> bool:
        """Whether calls for a pair that was serialized successfully run on the Trio thread.

        ``False`` from the start for a serializer whose every call may reach the registry
        (see the class description), and from the moment more pairs have been seen than
        the associated subject name strategy caches.
        """
        return self._budget > 0 and len(self._seen) <= self._budget

    def is_warm(self, topic: str, field: str) -> bool:
        """Whether the next call for ``(topic, field)`` runs on the Trio thread.

        Args:
            topic: The topic.
            field: ``"key"`` or ``"value"``.
        """
        return self.inline and (topic, field) in self._warm

    async def __call__(  # type: ignore[override, unused-ignore]
        self, obj: Any, ctx: SerializationContext | None = None
    ) -> bytes | None:
        """Serialize ``obj`` for ``ctx.topic`` and ``ctx.field``.

        Args:
            obj: The key or value.
            ctx: The ``SerializationContext(topic, MessageField.KEY or VALUE, headers)``
                (trio_producer passes it).

        Returns:
            What the wrapped serializer returns.

        Raises:
            TypeError: If ``ctx`` is ``None`` (the topic and field choose the subject).
        """
        if ctx is None:
            raise TypeError(
                "ThreadedSerializer needs a SerializationContext(topic, field, headers): the "
                "topic and the field choose the Schema Registry subject"
            )
        if not self.inline:
            return await self._in_thread(obj, ctx)
        key: _Key = (ctx.topic, str(ctx.field))
        if key in self._warm:
            await trio.lowlevel.checkpoint()
            return self._call(obj, ctx)
        self._seen.add(key)
        if not self.inline:
            # This pair went over the associated strategy's cache: from now on every
            # call may miss that cache.
            self._warm.clear()
            self._first_calls.clear()
            return await self._in_thread(obj, ctx)
        lock = self._first_calls.setdefault(key, trio.Lock())
        async with lock:
            if self.is_warm(*key):
                return self._call(obj, ctx)  # the lock's acquire was the checkpoint
            out = await self._in_thread(obj, ctx)
            if self.inline:
                self._warm.add(key)
                del self._first_calls[key]
            return out

    def _call(self, obj: Any, ctx: SerializationContext) -> bytes | None:
        out: bytes | None = self._serializer(obj, ctx)
        return out

    async def _in_thread(self, obj: Any, ctx: SerializationContext) -> bytes | None:
        return await trio.to_thread.run_sync(
            self._call, obj, ctx, abandon_on_cancel=True, limiter=self._limiter
        )

    def set_cluster_id_resolver(self, resolver: Callable[[], Any]) -> None:
        """Hand the Kafka cluster id resolver to the wrapped serializer (confluent's hook)."""
        self._serializer.set_cluster_id_resolver(resolver)

    def __repr__(self) -> str:
        return f"ThreadedSerializer({self._serializer!r})"


def _is_async(serializer: object) -> bool:
    call = getattr(type(serializer), "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call) or "._async." in type(serializer).__module__


def _inline_budget(serializer: Serializer) -> float:
    """How many distinct ``(topic, field)`` pairs the serializer can serve without HTTP.

    0 when a warm call may still reach the registry, ``math.inf`` when nothing it caches
    is ever evicted, else the capacity of its associated subject name strategy's cache.
    This reads confluent's private attributes; if one is missing (another version), the
    answer is 0: always the thread.
    """
    try:
        from confluent_kafka.schema_registry.serde import BaseSerializer
    except ImportError:  # no schema-registry extra: then it is not one of these
        return 0
    if not isinstance(serializer, BaseSerializer):
        return 0
    per_call_lookup = (
        getattr(serializer, "_use_latest_version", True) is not False
        or getattr(serializer, "_use_latest_with_metadata", True) is not None
        or getattr(serializer, "_use_schema_id", True) is not None
    )
    if per_call_lookup or not hasattr(serializer, "_known_subjects"):
        return 0
    strategy = getattr(serializer, "_subject_name_func", None)
    cache = getattr(strategy, "_cache", None)
    if cache is None and not getattr(serializer, "_strategy_accepts_client", False):
        return math.inf  # a function of (ctx, record name): nothing cached, no HTTP
    capacity = getattr(cache, "maxsize", None)
    if isinstance(capacity, int | float) and capacity >= 0:
        return capacity
    return 0

"""Serializers: turn the application's keys and values into bytes before a send accepts them.

Pass them to :func:`~trio_producer.open_producer`::

    from trio_producer.serialization import json_serializer, string_serializer

    async with open_producer(
        bootstrap_servers="localhost:9092",
        key_serializer=string_serializer,
        value_serializer=json_serializer,
    ) as producer:  # a Producer[str, object]
        await producer.send("orders", {"id": 7, "total": 12.5}, key="customer-42")

A serializer is any of:

- a plain function ``(obj, topic, headers) -> bytes | None``. ``headers`` is the
  message's header list, ``(name, value)`` pairs, which it may read and append to
  (a schema id in a header, say);
- an ``async def`` function with that signature: awaited by :meth:`Producer.send`,
  :meth:`~Producer.send_and_wait` and :meth:`~Producer.send_many`;
  :meth:`~Producer.send_nowait` cannot await and raises ``TypeError``;
- a confluent-kafka ``Serializer`` object (``StringSerializer``, ``AvroSerializer``,
  ``JSONSerializer``, ``ProtobufSerializer``, and their async variants), called with a
  ``SerializationContext(topic, MessageField.KEY or VALUE, headers)``.

``None`` is never passed to a serializer: a ``None`` key means no key, a ``None`` value is
a tombstone. A serializer that raises (or returns something that is not ``bytes`` or
``None``) makes the send raise :class:`~trio_producer.SerializationError`, and nothing is
accepted. Serialization runs on the Trio thread: keep it CPU-cheap, or make it async
(see :mod:`trio_producer.schema_registry` for serializers that may do network I/O).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, cast

import trio

from ._exceptions import SerializationError

if TYPE_CHECKING:
    from confluent_kafka.serialization import SerializationContext

if sys.version_info >= (3, 13):
    from typing import TypeVar
else:  # TypeVar defaults (PEP 696)
    from typing_extensions import TypeVar

__all__ = [
    "JsonSerializer",
    "SerializerHeaders",
    "json_serializer",
    "string_serializer",
]

#: What a serializer gets as ``headers``: the message's headers, which it may append to.
SerializerHeaders: TypeAlias = list[tuple[str, bytes | str | None]]

#: The key and value types a producer takes without serializers.
Raw: TypeAlias = bytes | str

T = TypeVar("T")
#: The key type of a :class:`~trio_producer.Producer` (``bytes | str`` without a serializer).
K = TypeVar("K", default=Raw)
#: The value type of a :class:`~trio_producer.Producer` (``bytes | str`` without one).
V = TypeVar("V", default=Raw)

T_contra = TypeVar("T_contra", contravariant=True)


class ContextSerializer(Protocol[T_contra]):
    """confluent-kafka's serializer shape: ``(obj, SerializationContext) -> bytes``."""

    def __call__(
        self, obj: T_contra, ctx: SerializationContext | None = ..., /
    ) -> bytes | Awaitable[bytes | None] | None: ...


#: A serializer of ``T``: ``(obj, topic, headers) -> bytes``, sync or async (returning
#: an awaitable), or a confluent-kafka ``Serializer`` object.
Serializer: TypeAlias = (
    Callable[[T, str, SerializerHeaders], "bytes | Awaitable[bytes | None] | None"]
    | ContextSerializer[T]
)


def string_serializer(obj: str, topic: str, headers: SerializerHeaders) -> bytes:
    """A ``str`` as UTF-8 (strict: a lone surrogate raises)."""
    if not isinstance(obj, str):
        raise TypeError(f"string_serializer takes str, not {type(obj).__name__}")
    return obj.encode()


class JsonSerializer:
    """JSON as UTF-8 bytes, compact, with ``json.dumps`` options (``default=``,
    ``sort_keys=``, ...). ``NaN`` and infinities are refused (they are not JSON)."""

    def __init__(self, **dumps_options: Any) -> None:
        options: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False}
        options["allow_nan"] = False
        options.update(dumps_options)
        self._encoder = json.JSONEncoder(**options)

    def __call__(self, obj: object, topic: str, headers: SerializerHeaders) -> bytes:
        return self._encoder.encode(obj).encode()

    def __repr__(self) -> str:
        return "JsonSerializer()"


#: JSON with the default options (compact, UTF-8, no NaN).
json_serializer: Callable[[object, str, SerializerHeaders], bytes] = JsonSerializer()


class Field(Generic[T]):
    """One configured serializer (for keys or for values), ready to call."""

    __slots__ = ("fn", "is_async", "name")

    def __init__(self, field: str, serializer: object) -> None:
        self.name = field
        self.fn, self.is_async = _adapt(field, serializer)

    def __repr__(self) -> str:
        return f"<{self.name}_serializer {self.fn!r}>"

    # Not protected from KeyboardInterrupt (the send methods are): a serializer that
    # blocks must not hold off Ctrl-C, and nothing is accepted while it runs. Trio
    # decides by the code objects of the frames on the stack, innermost marked one
    # first, so this marks the frame that calls a sync serializer, and serialize()'s
    # frame, the one that awaits (and so runs) an async serializer's coroutine.
    @trio.lowlevel.disable_ki_protection
    def call(self, obj: object, topic: str, headers: SerializerHeaders) -> object:
        """Call the serializer: the bytes (checked), or an awaitable for :meth:`serialize`."""
        try:
            out = self.fn(obj, topic, headers)
        except Exception as exc:
            raise SerializationError(self.name, topic, obj, exc) from exc
        except KeyboardInterrupt as exc:
            self.note_interrupted(exc, topic)
            raise
        if inspect.isawaitable(out):
            return out
        return self.check(out, topic, obj)

    def call_now(self, obj: object, topic: str, headers: SerializerHeaders) -> bytes | None:
        """Call a serializer where nothing can be awaited (``send_nowait``, the bulk
        path): an awaitable it returns is closed and refused."""
        out = self.call(obj, topic, headers)
        if type(out) is bytes or out is None:
            return out
        close = getattr(out, "close", None)
        if close is not None:
            close()  # no "coroutine was never awaited" on top of the error
        problem = TypeError(
            f"{self.name}_serializer returned an awaitable where it cannot be awaited: "
            "declare it `async def` (then send_nowait refuses it, and send() awaits it)"
        )
        raise SerializationError(self.name, topic, obj, problem) from problem

    @trio.lowlevel.disable_ki_protection
    async def serialize(self, obj: object, topic: str, headers: SerializerHeaders) -> bytes | None:
        """Call the serializer and await what it returns, if it is awaitable."""
        out = self.call(obj, topic, headers)
        if type(out) is bytes or out is None:
            return out
        try:
            result = await cast("Awaitable[object]", out)
        except Exception as exc:
            raise SerializationError(self.name, topic, obj, exc) from exc
        except KeyboardInterrupt as exc:
            self.note_interrupted(exc, topic)
            raise
        return self.check(result, topic, obj)

    def note_interrupted(self, exc: KeyboardInterrupt, topic: str) -> None:
        exc.add_note(
            f"trio_producer: interrupted while the {self.name}_serializer ran for a message "
            f"to topic {topic!r}: that message was not accepted"
        )

    def check(self, out: object, topic: str, obj: object) -> bytes | None:
        if type(out) is bytes or out is None:
            return out
        if isinstance(out, bytearray | memoryview):
            return bytes(out)
        problem = TypeError(
            f"{self.name}_serializer returned {type(out).__name__}: a serializer must "
            "return bytes (or None)"
        )
        raise SerializationError(self.name, topic, obj, problem) from problem


def _adapt(field: str, serializer: object) -> tuple[Callable[..., object], bool]:
    """``(fn(obj, topic, headers), is_async)`` for a serializer of ours or of confluent's."""
    if not callable(serializer):
        raise TypeError(
            f"{field}_serializer must be a callable (obj, topic, headers) -> bytes, an async "
            f"one, or a confluent_kafka Serializer, not {type(serializer).__name__} "
            f"{serializer!r:.60}"
        )
    call = getattr(type(serializer), "__call__", None)  # noqa: B004
    is_async = inspect.iscoroutinefunction(serializer) or inspect.iscoroutinefunction(call)
    from confluent_kafka.serialization import Serializer as ConfluentSerializer

    if isinstance(serializer, ConfluentSerializer):
        # confluent's take (obj, ctx); its async ones (AsyncAvroSerializer, ...) are plain
        # methods returning a coroutine, so they are known by their module.
        is_async = is_async or "._async." in type(serializer).__module__
        from confluent_kafka.serialization import MessageField, SerializationContext

        kind = MessageField.KEY if field == "key" else MessageField.VALUE
        confluent: Callable[[object, object], object] = serializer

        def with_context(obj: object, topic: str, headers: SerializerHeaders) -> object:
            return confluent(obj, SerializationContext(topic, kind, headers))

        with_context.__qualname__ = f"confluent:{type(serializer).__name__}"
        return with_context, is_async
    _check_arity(field, serializer)
    return serializer, is_async


def _check_arity(field: str, serializer: Callable[..., object]) -> None:
    """Refuse a one-argument serializer (aiokafka's ``obj -> bytes``) at open, with the fix."""
    try:
        signature = inspect.signature(serializer)
    except (TypeError, ValueError):
        return  # (a builtin without a signature: it is tried at the first send)
    try:
        signature.bind(None, "topic", [])
    except TypeError:
        try:
            signature.bind(None)
        except TypeError:
            return  # some other shape: the first send says what is wrong
        raise TypeError(
            f"{field}_serializer {serializer!r:.60} takes one argument (aiokafka's "
            "obj -> bytes); a trio_producer serializer takes (obj, topic, headers): wrap "
            f"it, {field}_serializer=lambda obj, topic, headers: f(obj)"
        ) from None

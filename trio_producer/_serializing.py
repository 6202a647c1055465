"""The send methods with serializers: serialize at the call, then send the bytes.

A subclass, chosen when ``open_producer`` gets a serializer, so that a producer without
one pays nothing for the feature. It sits in front of :class:`Producer` or of
:class:`SpooledProducer` (``super()`` reaches whichever is next), and serializes before
it calls them: a serializer that raises, or an awaited async one that is cancelled,
leaves the message not accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from ._args import check_topic
from ._exceptions import ProducerClosedError, SerializationError
from ._producer import Producer
from .serialization import Field, K, SerializerHeaders, V

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ._message import Headers, RecordMetadata

enable_ki_protection = trio.lowlevel.enable_ki_protection


def _header_list(headers: Headers | None) -> SerializerHeaders:
    """The header list the serializers see (a fresh list they may append to)."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    if isinstance(headers, list | tuple):
        return list(headers)
    raise TypeError(
        f"headers must be a mapping or a list of (name, value) pairs, not {type(headers).__name__}"
    )


class SerializingProducer(Producer[K, V]):
    """A :class:`Producer` with a key and/or value serializer (see :class:`Producer`)."""

    _key_field: Field[K] | None = None
    _value_field: Field[V] | None = None

    def _set_serializers(self, key: Field[K] | None, value: Field[V] | None) -> None:
        self._key_field = key
        self._value_field = value
        self._is_async = bool((key and key.is_async) or (value and value.is_async))

    def _check_open_now(self, topic: str) -> None:
        """Refuse before serializing (a serializer may have side effects: a schema
        registration) when the send would be refused anyway."""
        check_topic(topic)
        if self._channel.closed:
            raise self._channel.closed_error()

    async def _prepare(
        self, topic: str, key: object, value: object, headers: Headers | None
    ) -> tuple[Any, Any, SerializerHeaders | None]:
        """``send``'s and ``send_and_wait``'s first half: checks, then the key, the value
        and the headers to hand on (a checkpoint on every path)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._check_open_now(topic)
        except ProducerClosedError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        pairs = _header_list(headers)
        k, v = await self._serialize(topic, key, value, pairs)
        return k, v, pairs or None

    def _serialize_now(
        self, topic: str, key: object, value: object, headers: SerializerHeaders
    ) -> tuple[Any, Any]:
        """Serialize where nothing can be awaited (an awaitable is refused and closed)."""
        field = self._key_field
        if key is not None and field is not None:
            key = field.call_now(key, topic, headers)
        vfield = self._value_field
        if value is not None and vfield is not None:
            value = vfield.call_now(value, topic, headers)
        return key, value

    async def _serialize(
        self, topic: str, key: object, value: object, headers: SerializerHeaders
    ) -> tuple[Any, Any]:
        """Serialize, awaiting an async serializer; the key first, then the value (so
        that nothing is left un-awaited when the first one fails or is cancelled)."""
        field = self._key_field
        if key is not None and field is not None:
            key = await field.serialize(key, topic, headers)
        vfield = self._value_field
        if value is not None and vfield is not None:
            value = await vfield.serialize(value, topic, headers)
        return key, value

    @enable_ki_protection
    async def send(
        self,
        topic: str,
        value: V | None,
        *,
        key: K | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        k, v, pairs = await self._prepare(topic, key, value, headers)
        await super().send(topic, v, key=k, headers=pairs, partition=partition, timestamp=timestamp)

    @enable_ki_protection
    def send_nowait(
        self,
        topic: str,
        value: V | None,
        *,
        key: K | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        if self._is_async:
            fields = (self._key_field, self._value_field)
            which = " and ".join(repr(f) for f in fields if f is not None and f.is_async)
            raise TypeError(
                f"send_nowait cannot await this producer's async serializer ({which}): "
                "use await send()"
            )
        self._check_open_now(topic)
        pairs = _header_list(headers)
        k, v = self._serialize_now(topic, key, value, pairs)
        super().send_nowait(
            topic, v, key=k, headers=pairs or None, partition=partition, timestamp=timestamp
        )

    @enable_ki_protection
    async def send_and_wait(
        self,
        topic: str,
        value: V | None,
        *,
        key: K | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> RecordMetadata:
        k, v, pairs = await self._prepare(topic, key, value, headers)
        return await super().send_and_wait(
            topic, v, key=k, headers=pairs, partition=partition, timestamp=timestamp
        )

    @enable_ki_protection
    async def send_many(
        self, topic: str, messages: Iterable[V | tuple[K | None, V | None] | None]
    ) -> int:
        """See :meth:`Producer.send_many`; each element is serialized as it is taken.

        A ``tuple`` of two is a ``(key, value)`` pair (to send a tuple as a value, pass
        ``(None, value)``). An element whose serializer raises is consumed but not
        accepted (:class:`SerializationError` says which). With sync serializers this
        is the bulk path, which carries no headers: a serializer that adds headers makes
        it raise for that element (use :meth:`send`). With an async serializer, each
        element is serialized and then sent like :meth:`send` (a checkpoint each, and
        headers travel); if the call is cancelled or interrupted while an element is
        being serialized, that element was consumed but not accepted (a note on the
        exception says how many were accepted).
        """
        check_topic(topic)
        if self._is_async:
            return await self._send_many_awaiting(topic, iter(messages))
        return await super().send_many(topic, self._serialized(topic, iter(messages)))

    def _serialized(self, topic: str, elements: Iterator[object]) -> Iterator[Any]:
        """The elements as bytes or ``(key, value)`` bytes pairs, serialized lazily: one
        element is taken from ``elements`` only when the bulk path takes one from here."""
        for index, element in enumerate(elements):
            key, value = _split(element)
            headers: SerializerHeaders = []
            try:
                k, v = self._serialize_now(topic, key, value, headers)
                if headers:
                    problem = ValueError(
                        f"a serializer added headers {headers!r:.60}, which send_many's "
                        "bulk path cannot carry: use send() for such messages"
                    )
                    field = "value" if value is not None else "key"
                    raise SerializationError(field, topic, element, problem) from problem
            except SerializationError as exc:
                raise _at_index(exc, index) from exc.__cause__
            except BaseException as exc:  # e.g. Ctrl-C in the serializer (it runs unprotected)
                exc.add_note(
                    f"trio_producer: send_many element {index} was being serialized: "
                    "consumed, not accepted (the ones before it were)"
                )
                raise
            yield v if k is None else (k, v)

    async def _send_many_awaiting(self, topic: str, elements: Iterator[object]) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        channel = self._channel
        accepted = 0
        in_hand = False
        try:
            if channel.closed:
                raise channel.closed_error()  # before taking anything
            for index, element in enumerate(elements):
                in_hand = True
                key, value = _split(element)
                headers: SerializerHeaders = []
                try:
                    k, v = await self._serialize(topic, key, value, headers)
                except SerializationError as exc:
                    raise _at_index(exc, index) from exc.__cause__
                await super().send(topic, v, key=k, headers=headers or None)
                in_hand = False
                accepted += 1
        except BaseException as exc:
            if in_hand:
                exc.add_note(
                    f"trio_producer: send_many accepted {accepted} elements; the next one "
                    "it took (being serialized or sent) was not accepted"
                )
            raise
        await trio.lowlevel.cancel_shielded_checkpoint()
        return accepted


def _split(element: object) -> tuple[object, object]:
    if isinstance(element, tuple):
        if len(element) != 2:
            raise TypeError(
                f"send_many takes values or (key, value) pairs, not a {len(element)}-tuple"
            )
        return element[0], element[1]
    return None, element


def _at_index(exc: SerializationError, index: int) -> SerializationError:
    return SerializationError(exc.field, exc.topic, exc.obj, exc.error, index)

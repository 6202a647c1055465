"""The encoder: serialize at the call, then send the bytes.

``open_producer`` gives the :class:`~trio_producer.Producer` an :class:`Encoder` when it
gets a serializer; without one the producer's ``_encoder`` is ``None``, and the feature
costs one attribute check per send. The send methods call it before they build the
message, whatever the intake (memory or spool): a serializer that raises, or an awaited
async one that is cancelled, leaves the message not accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from ._args import make_item
from ._exceptions import ProducerClosedError, SerializationError
from ._topics import check_topic

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._intake import Acceptor
    from ._message import Headers
    from ._worker import BatchChannel
    from .serialization import Field, SerializerHeaders


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


class Encoder:
    """A producer's key and/or value serializer, called by its send methods."""

    def __init__(
        self, channel: BatchChannel, key: Field[Any] | None, value: Field[Any] | None
    ) -> None:
        self._channel = channel
        self._key_field = key
        self._value_field = value
        #: An async serializer: ``send_nowait`` refuses, ``send_many`` awaits each element.
        self.is_async = bool((key and key.is_async) or (value and value.is_async))

    def _check_open_now(self, topic: str) -> None:
        """Refuse before serializing (a serializer may have side effects: a schema
        registration) when the send would be refused anyway."""
        check_topic(topic)
        if self._channel.closed:
            raise self._channel.closed_error()

    async def prepare(
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

    def prepare_now(
        self, topic: str, key: object, value: object, headers: Headers | None
    ) -> tuple[Any, Any, SerializerHeaders | None]:
        """``send_nowait``'s first half: :meth:`prepare` where nothing can be awaited (an
        async serializer is refused with ``TypeError``)."""
        if self.is_async:
            fields = (self._key_field, self._value_field)
            which = " and ".join(repr(f) for f in fields if f is not None and f.is_async)
            raise TypeError(
                f"send_nowait cannot await this producer's async serializer ({which}): "
                "use await send()"
            )
        self._check_open_now(topic)
        pairs = _header_list(headers)
        k, v = self._serialize_now(topic, key, value, pairs)
        return k, v, pairs or None

    def serialized(self, topic: str, elements: Iterator[object]) -> Iterator[Any]:
        """``send_many``'s elements as bytes or ``(key, value)`` bytes pairs, serialized
        lazily: one element is taken from ``elements`` only when the bulk path takes one
        from here (sync serializers; with an async one, see :meth:`send_many_awaiting`).

        A ``tuple`` of two is a ``(key, value)`` pair (to send a tuple as a value, pass
        ``(None, value)``). An element whose serializer raises is consumed but not
        accepted (:class:`SerializationError` says which). The bulk path carries no
        headers: a serializer that adds headers makes it raise for that element (use
        :meth:`Producer.send`).
        """
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

    async def send_many_awaiting(
        self,
        topic: str,
        elements: Iterator[object],
        acceptor: Acceptor,
    ) -> int:
        """``send_many`` with an async serializer: each element is serialized and then
        accepted with ``acceptor`` (the intake's) like :meth:`Producer.send` does (a
        checkpoint each, and headers travel); if the call is cancelled or interrupted
        while an element is being serialized, that element was consumed but not accepted
        (a note on the exception says how many were accepted)."""
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
                item, size = make_item(topic, v, k, headers or None, None, None, None)
                await acceptor.send(item, size)
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

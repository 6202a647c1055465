"""Argument coercion for the send methods: validate completely, then build the queue item.

Everything here runs before a message is accepted, so a bad argument raises at the call
and nothing is accepted. The hot path (``bytes`` value, known topic, no headers) is a few
type checks and a set lookup, inlined in ``Producer.send``; the rest comes here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeAlias

from ._batch import Route, route_for
from ._client import TrackedReport
from ._topics import check_topic

if TYPE_CHECKING:
    import trio

    from ._batch import Pending


def _utf8(what: str, value: str) -> bytes:
    try:
        return value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is a str that cannot be encoded as UTF-8 ({exc.reason} at index "
            f"{exc.start}: {value[exc.start : exc.end]!r}); pass bytes, or a valid str"
        ) from None


def bytes_arg(name: str, value: object) -> bytes | None:
    """The slow path of argument coercion: str is encoded, bytes-likes are copied."""
    if value is None:
        return None
    if isinstance(value, str):
        return _utf8(name, value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    allowed = "bytes, bytearray, memoryview, str (encoded as UTF-8) or None"
    raise TypeError(f"{name} must be {allowed}, not {type(value).__name__} {value!r:.50}")


def check_headers(headers: object) -> list[tuple[str, bytes | None]]:
    """Headers as ``(name, bytes-or-None)`` pairs, encoded here: a value that cannot be
    encoded raises at the call, never later in a background task."""
    if isinstance(headers, Mapping):
        pairs = list(headers.items())
    elif isinstance(headers, list | tuple):
        pairs = list(headers)
    else:
        raise TypeError(
            "headers must be a mapping or a list of (name, value) pairs, "
            f"not {type(headers).__name__}"
        )
    out: list[tuple[str, bytes | None]] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"each header must be a (name, value) pair, not {pair!r:.50}")
        name, value = pair
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__} {name!r:.50}")
        _utf8(f"header name {name!r:.50}", name)
        if isinstance(value, str):
            value = _utf8(f"header {name!r:.50}", value)
        elif isinstance(value, bytearray | memoryview):
            value = bytes(value)
        elif value is not None and not isinstance(value, bytes):
            raise TypeError(
                f"header {name!r} must have a bytes, str or None value, not {type(value).__name__}"
            )
        out.append((name, value))
    return out


#: What ``send_many`` takes: a value, or a ``(key, value)`` pair.
BulkMessage: TypeAlias = bytes | str | tuple[bytes | str | None, bytes | str | None] | None


def bulk_item(topic: str, element: object) -> tuple[Pending, int]:
    """One element of ``send_many`` that is not plain ``bytes``: a str value or a pair."""
    if isinstance(element, tuple):
        if len(element) != 2:
            raise TypeError(
                f"send_many takes values or (key, value) pairs, not a {len(element)}-tuple"
            )
        key = bytes_arg("key", element[0])
        value = bytes_arg("value", element[1])
    else:
        key = None
        value = bytes_arg("value", element)
    size = len(value) if value is not None else 0
    if key is None:
        return {"topic": topic, "value": value}, size
    return {"topic": topic, "value": value, "key": key}, size + len(key)


def make_item(
    topic: str,
    value: object,
    key: object,
    headers: object,
    partition: int | None,
    timestamp: int | None,
    waiter: trio.Event | None,
) -> tuple[Pending, int]:
    """Validate one message completely and build it, with its size. Raises before
    anything is accepted."""
    check_topic(topic)
    if type(value) is not bytes:
        value = bytes_arg("value", value)
    item: Pending = {"topic": topic, "value": value}
    size = len(value) if value is not None else 0
    if key is not None:
        key_bytes = key if isinstance(key, bytes) else bytes_arg("key", key)
        if key_bytes is not None:
            item["key"] = key_bytes
            size += len(key_bytes)
    if partition is not None:
        if type(partition) is not int or partition < 0:
            raise TypeError(f"partition must be an int >= 0 or None, not {partition!r}")
        item["partition"] = partition
    if timestamp is not None:
        if type(timestamp) is not int or timestamp <= 0:
            raise TypeError(
                "timestamp must be an int of milliseconds since the epoch > 0 or None, "
                f"not {timestamp!r}"
            )
        item["timestamp"] = timestamp
    pairs = None
    if headers is not None:
        pairs = check_headers(headers)
        item["headers"] = pairs
    if pairs is not None or waiter is not None:
        item["callback"] = TrackedReport(pairs, waiter)
    route = route_for(item, own_callback=waiter is not None)
    if route is not Route.SHARED:  # (the common route is the absence of the key)
        item["route"] = route
    return item, size
